"""pagedc.mxr: the MIGraphX target.

    lowering.py   one fully static graph per shape bucket (shapes folded to constants)
    ops.py        what MIGraphX's ONNX parser accepts, as data
    check.py      checks a lowered graph against ops.py before MIGraphX sees it
    standard.py   the dense model lowered at the same buckets (--emit-standard)
    compile.py    parse_onnx -> compile(get_target) -> save, one .mxr per bucket
    weights.py    the weights as parameters of every bucket's program, written once to weights.bin
    child.py      runs worker.py (MIGraphX's parse/quantize/compile/save) in a child: crashes become errors
"""
