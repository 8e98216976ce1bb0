"""pagedc.bench: time a compiled model's prefill and decode steps (`pagedc bench`).

    kind.py    what a path is (paged separate/combined, standard dense; backend, buckets)
    limits.py  what a step may ask of it (positions, pool, buckets)
    sides.py   one runner per kind, building the step's inputs
    timer.py   alternating rounds, warm-up, avg/min/max/median per phase
    run.py     the whole run and its report
"""
