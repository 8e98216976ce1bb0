"""A model with 4 GiB of external weights is inspected and rewritten without reading them."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from pagedc.testing import DecoderConfig, build_decoder

BIG_VOCAB = 2**21   # x hidden 512 x fp32 = 4 GiB per vocab-sized matrix


@pytest.fixture(scope="module")
def huge_model(tmp_path_factory):
    """A reference decoder whose embedding and lm_head claim BIG_VOCAB rows in a sparse external file."""
    directory = tmp_path_factory.mktemp("huge")
    model = build_decoder(DecoderConfig(hidden_size=512, num_heads=8, num_kv_heads=2, head_dim=64, vocab_size=64), "decomposed")
    onnx.save(model, str(directory / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    model = onnx.load(str(directory / "model.onnx"), load_external_data=False)
    data = directory / "model.onnx.data"
    end = data.stat().st_size
    for tensor in model.graph.initializer:
        if 64 in tensor.dims and len(tensor.dims) == 2:          # embedding [V, H] and lm_head [H, V]
            tensor.dims[:] = [BIG_VOCAB if d == 64 else d for d in tensor.dims]
            length = BIG_VOCAB * 512 * 4
            info = {e.key: e for e in tensor.external_data}
            info["offset"].value, info["length"].value = str(end), str(length)
            end += length
    onnx.save(model, str(directory / "model.onnx"))
    with open(data, "r+b") as f:
        f.truncate(end)                                          # sparse: no disk or memory used
    return directory / "model.onnx"


def _peak_rss_mib(code: str) -> tuple[float, str]:
    probe = code + "\nimport resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    *lines, rss = out.strip().splitlines()
    return float(rss), "\n".join(lines)


def test_inspect_and_rewrite_stay_small(huge_model):
    assert huge_model.with_suffix(".onnx.data").stat().st_size > 8 * 2**30
    code = (f"import json; from click.testing import CliRunner; from pagedc.cli import main\n"
            f"r = CliRunner().invoke(main, ['inspect', r'{huge_model}', '--json']); print(r.stdout)")
    rss, stdout = _peak_rss_mib(code)
    assert json.loads(stdout)["num_layers"] == 2
    assert rss < 600, f"inspect peaked at {rss:.0f} MiB for a model with 8 GiB of weights"
    code = (f"from pagedc.model_file import load_model; from pagedc.passes.paged import rewrite_to_paged\n"
            f"model, report = rewrite_to_paged(load_model(r'{huge_model}')); print(report.num_layers)")
    rss, stdout = _peak_rss_mib(code)
    assert stdout == "2" and rss < 600, f"rewrite peaked at {rss:.0f} MiB"
    print(f"peak RSS of the rewrite: {rss:.0f} MiB")
