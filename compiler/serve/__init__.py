"""pagedc.serve: an OpenAI-compatible HTTP server over the continuous-batching Engine (`pagedc serve`).

    server.py        load the engine and tokenizer files, run uvicorn, exit 0 on SIGINT/SIGTERM
    app.py           the routes (FastAPI): /v1/completions, /v1/chat/completions, /v1/models, /health, /metrics
    protocol.py      request bodies (pydantic, strict) and OpenAI's error JSON
    generation.py    one HTTP request: prompts checked against the model's limits, submitted, read back as text
    engine_thread.py the one thread driving Engine.step(); tokens go back through per-request asyncio queues
    detokenize.py    incremental detokenization (no split characters) and stop strings
    chat_template.py the model's chat template rendered as transformers renders it
    model_text.py    tokenizer.json, tokenizer_config.json, generation_config.json: text <-> ids, eos ids
    responses.py     OpenAI response and SSE chunk shapes
    metrics.py       Prometheus metrics

Needs the `serve` extra: pip install 'pagedc[serve]'.
"""
