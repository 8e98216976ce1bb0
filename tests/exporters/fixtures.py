"""Known-good ONNX exports of tiny HF decoders, made by real exporters, cached.

pagedc's passes must be tested on graphs pagedc did not write.  This module
builds them on first use, from the main test venv (no torch/transformers
there): four exporters in three venvs (VENVS), because onnxruntime-genai's
builder needs transformers 5.x, optimum-onnx pins transformers < 4.58 and
transformers' own exporter with ORT fusions needs transformers >= 5.23:
- genai: onnxruntime-genai's model builder (GroupQueryAttention graphs);
- optimum: optimum-onnx's TorchScript export (plain ONNX, decomposed attention);
- dynamo: torch.onnx.export(dynamo=True) of a wrapper module (export_dynamo.py),
  run in the genai venv (transformers 5 + onnxscript): plain ONNX from
  torch.export, constants folded, SDPA decomposed;
- transformers, transformers-ort, transformers-b1: transformers' own
  `OnnxExporter().export_for_generation(..., multi_token_decode=True)`
  (export_transformers.py) plain, with ORT's CPU fusions at a dynamic batch
  (RotaryEmbedding + decomposed attention), and with the batch specialised to 1
  (GroupQueryAttention with the causal mask as attention_bias); the fixture is
  its decode.onnx (MODEL_FILES), the graph that also serves prefill.

    exported_model(arch, exporter) -> .../model.onnx (or decode.onnx), for (arch, exporter) in CASES
    export_check(arch, exporter) -> the figures of check_export.py (check.json)

Archs (make_hf_model.py): llama, qwen2 (separate q/k/v, rotary, GQA), gpt2
(learned positions, fused c_attn Conv1D QKV with bias, MHA, LayerNorm, GELU)
and phi3 (fused qkv_proj and gate_up_proj, rotary, GQA) for the first three
exporters; llama, qwen3 (q/k norm) and mistral (sliding window) for
transformers' exporter (EXPORTER_ARCHS: keeps the cold build to a few
minutes).  ARCH_EXPORTERS lists the exporters of each arch, CASES all pairs.
onnxruntime-genai's builder has no GPT-2 (UNSUPPORTED says why); asking for an
unsupported pair is a ValueError (a static fact, not a skip), whereas
ExporterUnavailable still means "could not be installed or run here".

Input names are kept as each exporter emits them (past_key_values.{i}.key|value
-> present.{i}.key|value everywhere), but not their order or extra inputs:
- genai: input_ids, attention_mask, then every layer's past key, then every
  layer's past value (no position_ids; head dim symbolic "kv_cache_dim");
- optimum: input_ids, attention_mask, position_ids, past_key_values.*, except
  gpt2: input_ids, past_key_values.*, attention_mask, position_ids;
- dynamo: input_ids, attention_mask, position_ids, past_key_values.*;
- transformers*: input_ids, attention_mask (not in -b1), position_ids,
  input.cache.layers.{i}.keys|values -> output.cache.layers.{i}.* (static dims as
  numeral dim_params, "2"), plus _sliding_window_tensor scalars on mistral.

Build steps, all by subprocess with HF_HUB_OFFLINE=1:
1. venv per VENVS entry: `python -m venv`, `pip install torch==2.13.0` (first, so
   the local CPU wheel wins; its dependencies constrained by the file), then
   `pip install -r requirements-<venv>.txt`;
2. the tiny HF model of an arch, made ONCE in the genai venv
   (make_hf_model.py), so all exports of an arch share weights;
3. the export, then check_export.py in the exporter's venv (logits vs torch).

Cache: ${PAGEDC_CACHE:-~/.cache/pagedc}/exporters/<key>/ (caches of other
keys that no process holds are removed when a new key is first built), key = hash of the
requirements files, the scripts, the export commands and the Python version,
so changing any of them rebuilds.  Outputs are built in a temp dir and renamed
into place; a file lock serialises concurrent pytest processes.  Venvs are
not relocatable, so they are built in place and marked ready when complete.

Errors: ExporterUnavailable when a venv cannot be installed or an exporter
cannot run (no network, a broken release): tests skip on it.  ExportCheckFailed
when the export runs but its logits disagree with torch: a real failure.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ARCHS = ("llama", "qwen2", "gpt2", "phi3", "qwen3", "mistral")
TRANSFORMERS_EXPORTERS = ("transformers", "transformers-ort", "transformers-b1")
EXPORTERS = ("genai", "optimum", "dynamo", *TRANSFORMERS_EXPORTERS)
# The archs each exporter is built for (a choice to bound build time, not a limitation).
EXPORTER_ARCHS = {
    **{e: ("llama", "qwen2", "gpt2", "phi3") for e in ("genai", "optimum", "dynamo")},
    **{e: ("llama", "qwen3", "mistral") for e in TRANSFORMERS_EXPORTERS},
}
MODEL_FILES = {e: "decode.onnx" for e in TRANSFORMERS_EXPORTERS}  # the fixture's graph; default model.onnx
BATCH_ONE = ("transformers-b1",)  # exports whose batch torch.export specialised to 1
# Combinations no exporter release here can make; everything else is expected to work.
UNSUPPORTED = {
    # onnxruntime-genai 0.18.0's builder dispatches on config.architectures and has
    # no GPT2LMHeadModel: create_model() raises NotImplementedError("The <dir>
    # model is not currently supported.").
    ("gpt2", "genai"): "onnxruntime-genai's model builder does not support GPT-2 (GPT2LMHeadModel)",
}
ARCH_EXPORTERS = {
    a: tuple(e for e in EXPORTERS if a in EXPORTER_ARCHS[e] and (a, e) not in UNSUPPORTED) for a in ARCHS
}
CASES = tuple((a, e) for a in ARCHS for e in ARCH_EXPORTERS[a])  # every buildable (arch, exporter)
VENVS = {"genai": "genai", "optimum": "optimum", "dynamo": "genai",
         **{e: "transformers" for e in TRANSFORMERS_EXPORTERS}}  # exporter -> requirements-<venv>.txt
HF_ENV = "genai"  # the venv that makes the HF models (transformers 5 writes rope_parameters)
TORCH_PIN = "torch==2.13.0"
SCRIPTS = ("make_hf_model.py", "check_export.py", "export_dynamo.py", "export_transformers.py")

# Exporter command lines, run with the exporter venv's python (cwd: this directory).
EXPORT_COMMANDS = {
    "genai": [
        "-m", "onnxruntime_genai.models.builder",
        "-i", "{hf}", "-o", "{out}", "-p", "fp32", "-e", "cpu", "-c", "{cache}",
    ],
    "optimum": [
        "-m", "optimum.commands.optimum_cli", "export", "onnx",
        "-m", "{hf}", "--task", "text-generation-with-past", "{out}",
    ],
    "dynamo": ["export_dynamo.py", "--hf", "{hf}", "--out", "{out}"],
    **{e: ["export_transformers.py", "--hf", "{hf}", "--out", "{out}", "--variant", e.partition("-")[2] or "plain"]
       for e in TRANSFORMERS_EXPORTERS},
}  # fmt: skip

_failed: dict = {}  # venv -> ExporterUnavailable, so one pytest run tries once


class ExporterUnavailable(RuntimeError):
    """An exporter could not be installed or run here; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ExportCheckFailed(AssertionError):
    """The export ran, but its logits do not match the torch model's."""


def log(msg: str) -> None:
    print(f"[pagedc exporters] {msg}", file=sys.stderr, flush=True)


def cache_key() -> str:
    """Hash of everything that decides what gets built."""
    h = hashlib.sha256()
    names = sorted(f"requirements-{v}.txt" for v in set(VENVS.values())) + sorted(SCRIPTS)
    for name in names:
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes() + b"\0")
    h.update(json.dumps([EXPORT_COMMANDS, VENVS, TORCH_PIN, HF_ENV], sort_keys=True).encode())
    h.update(f"py{sys.version_info.major}.{sys.version_info.minor}".encode())
    return h.hexdigest()[:16]


def cache_dir() -> pathlib.Path:
    root = os.environ.get("PAGEDC_CACHE") or "~/.cache/pagedc"
    return pathlib.Path(root).expanduser() / "exporters" / cache_key()


def subprocess_env() -> dict:
    """The environment for every child: offline hub, no leaks from the test venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1")
    return env


def run(cmd: list, log_path: pathlib.Path) -> subprocess.CompletedProcess:
    """Run one command, appending its output to log_path; never raises."""
    t0 = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n")
        f.flush()
        proc = subprocess.run(
            [str(c) for c in cmd], check=False, stdout=f, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=HERE
        )
    log(f"  {'ok' if proc.returncode == 0 else f'FAILED ({proc.returncode})'} in {time.monotonic() - t0:.1f}s")
    return proc


def tail(path: pathlib.Path, lines: int = 25) -> str:
    """The last lines of a log, for error messages (progress bars dropped)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    kept = [ln for ln in text.splitlines() if "%|" not in ln and "is ignored: it is neither" not in ln]
    return "\n".join(kept[-lines:])


def run_or_unavailable(cmd: list, log_path: pathlib.Path, what: str) -> None:
    """Run a build step; a failure means the exporter is unavailable here."""
    log(f"{what}: {' '.join(map(str, cmd[:6]))} ...")
    if run(cmd, log_path).returncode != 0:
        raise ExporterUnavailable(f"{what} failed: {' '.join(map(str, cmd))}\n(log: {log_path})\n{tail(log_path)}")


@contextlib.contextmanager
def build_lock(root: pathlib.Path):
    """Exclusive lock for building under root, shared by all processes."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def python_of(venv: pathlib.Path) -> pathlib.Path:
    return venv / "bin" / "python"


def ensure_venv(root: pathlib.Path, exporter: str) -> pathlib.Path:
    """The venv named `exporter` (a VENVS value), created and installed on first use (caller holds the lock)."""
    venv = root / f"venv-{exporter}"
    ready = venv / ".pagedc-ready"
    if ready.exists():
        return venv
    if exporter in _failed:
        raise _failed[exporter]
    shutil.rmtree(venv, ignore_errors=True)  # a half-built venv from a killed run
    log_path = root / "logs" / f"venv-{exporter}.log"
    log_path.unlink(missing_ok=True)
    py, req = python_of(venv), HERE / f"requirements-{exporter}.txt"
    steps = [
        ([sys.executable, "-m", "venv", venv], "create venv"),
        # -c: torch's own dependencies come at the versions the file pins.
        ([py, "-m", "pip", "install", TORCH_PIN, "-c", req], "install torch"),
        ([py, "-m", "pip", "install", "-r", req], f"install {req.name}"),
    ]
    try:
        for cmd, what in steps:
            run_or_unavailable(cmd, log_path, f"[{exporter}] {what}")
    except ExporterUnavailable as err:
        _failed[exporter] = err
        raise
    freeze = subprocess.run(
        [py, "-m", "pip", "freeze"], check=False, capture_output=True, text=True, env=subprocess_env()
    )
    ready.write_text(freeze.stdout)
    return venv


@contextlib.contextmanager
def staging(root: pathlib.Path, final: pathlib.Path):
    """A temp dir under root whose "out" subdir is renamed to final on success."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        yield tmp / "out"
        os.rename(tmp / "out", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_hf_model(root: pathlib.Path, arch: str) -> pathlib.Path:
    """The tiny HF model dir of one arch, shared by all exporters."""
    final = root / f"hf-{arch}"
    if final.exists():
        return final
    py = python_of(ensure_venv(root, HF_ENV))
    with staging(root, final) as out:
        cmd = [py, HERE / "make_hf_model.py", "--arch", arch, "--out", out]
        run_or_unavailable(cmd, root / "logs" / f"hf-{arch}.log", f"[{arch}] make HF model")
    return final


def check_or_fail(py: pathlib.Path, hf: pathlib.Path, out: pathlib.Path, exporter: str, log_path) -> None:
    """Run check_export.py; any failure here is a real failure, never a skip."""
    cmd = [py, HERE / "check_export.py", "--hf", hf, "--onnx", out / model_file(exporter), "--exporter", exporter]
    log(f"[{hf.name[3:]}] check {exporter} logits vs torch ...")
    if run(cmd, log_path).returncode == 0:
        return
    report = out / "check.json"
    figures = "(no check.json: the check crashed)"
    if report.exists():  # the figures, without the long graph summary
        figures = json.dumps({k: v for k, v in json.loads(report.read_text()).items() if k != "graph"})
    raise ExportCheckFailed(f"{' '.join(map(str, cmd))}\n(log: {log_path})\n{tail(log_path)}\n{figures}")


def build_export(root: pathlib.Path, arch: str, exporter: str, final: pathlib.Path) -> None:
    """Make the HF model, export it, check it, then move it into place."""
    t0 = time.monotonic()
    log(f"building {arch}/{exporter} under {root} (first use: ~3 min cold for all CASES)")
    hf = ensure_hf_model(root, arch)
    py = python_of(ensure_venv(root, VENVS[exporter]))
    log_path = root / "logs" / f"{arch}-{exporter}.log"
    log_path.unlink(missing_ok=True)
    with staging(root, final) as out:
        args = [a.format(hf=hf, out=out, cache=out.parent / "hf-cache") for a in EXPORT_COMMANDS[exporter]]
        run_or_unavailable([py, *args], log_path, f"[{arch}] export with {exporter}")
        if not (out / model_file(exporter)).exists():
            raise ExporterUnavailable(f"{exporter} wrote no {model_file(exporter)} in {out}\n{tail(log_path)}")
        check_or_fail(py, hf, out, exporter, log_path)
    log(f"built {arch}/{exporter} in {time.monotonic() - t0:.1f}s")


def exported_model(arch: str, exporter: str) -> pathlib.Path:
    """Path of the checked model.onnx (decode.onnx) of arch exported by exporter (built on first use)."""
    if arch not in ARCHS or exporter not in EXPORTERS:
        raise ValueError(f"arch must be in {ARCHS} and exporter in {EXPORTERS}, got {arch!r}, {exporter!r}")
    if (arch, exporter) in UNSUPPORTED:
        raise ValueError(f"no {exporter} export of {arch}: {UNSUPPORTED[arch, exporter]}; see ARCH_EXPORTERS")
    if arch not in EXPORTER_ARCHS[exporter]:
        raise ValueError(f"the fixtures build {exporter} only for {EXPORTER_ARCHS[exporter]}, not {arch!r}")
    root = cache_dir()
    model = root / f"{arch}-{exporter}" / model_file(exporter)
    if not root.exists():
        prune_stale_keys(root)
    if not model.exists():
        with build_lock(root):
            if not model.exists():  # another process may have built it meanwhile
                build_export(root, arch, exporter, model.parent)
    return model


def model_file(exporter: str) -> str:
    return MODEL_FILES.get(exporter, "model.onnx")


def prune_stale_keys(root: pathlib.Path) -> None:
    """Remove caches of other keys (about 3 GB each: venvs with torch) that no process is using.

    A key changes whenever a script or requirements file does, so without this
    every edit would leave its old cache behind. A cache whose lock another
    process holds is kept.
    """
    parent = root.parent
    if not parent.is_dir():
        return
    for other in parent.iterdir():
        if other == root or not other.is_dir() or len(other.name) != 16:
            continue
        if not all(c in "0123456789abcdef" for c in other.name):
            continue
        with open(other / ".lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue                                  # in use by another test run
            log(f"removing the stale exporter cache {other}")
            shutil.rmtree(other, ignore_errors=True)


def export_check(arch: str, exporter: str) -> dict:
    """The figures check_export.py recorded for this export (check.json)."""
    return json.loads((exported_model(arch, exporter).parent / "check.json").read_text())


if __name__ == "__main__":  # build everything: python tests/exporters/fixtures.py
    for a, e in CASES:
        print(exported_model(a, e), export_check(a, e)["max_abs_diff"])
