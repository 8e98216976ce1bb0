"""Import arrows point one way (DESIGN.md §1): passes <- compiler stages <- cli; runtime -> the contract only.

Walks every module's imports (function-level ones too) and fails on an arrow the layout forbids:

    pagedc.errors, pagedc.manifest*   the contract: import no other stage
    pagedc.passes                     onnx / onnx_ir / onnxscript, and the contract's errors
    pagedc.runtime                    itself and the contract (manifest, errors)
    pagedc.testing                    itself only (reference models must not lean on what they test)
    pagedc.{build,mxr,verify,bench,serve,...}   anything but the CLI
    pagedc.cli                        anything
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"compiler": "pagedc", "passes": "pagedc.passes", "runtime": "pagedc.runtime", "testing": "pagedc.testing"}
CONTRACT = ("pagedc.errors", "pagedc.manifest", "pagedc.manifest_schema")
ALLOWED = {   # importing module's package -> pagedc modules it may import (prefixes)
    "pagedc.passes": ("pagedc.passes", "pagedc.errors"),
    "pagedc.runtime": ("pagedc.runtime",) + CONTRACT,
    "pagedc.testing": ("pagedc.testing",),
    "contract": CONTRACT,
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _pagedc_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n == "pagedc" or n.startswith("pagedc.")}


def _rule(module: str) -> tuple[str, ...] | None:
    """The allowed prefixes for `module`, or None for 'anything but the CLI'; the CLI may import anything."""
    if module in CONTRACT:
        return ALLOWED["contract"]
    for package in ("pagedc.passes", "pagedc.runtime", "pagedc.testing"):
        if module == package or module.startswith(package + "."):
            return ALLOWED[package]
    return None


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_every_import_arrow_points_the_allowed_way():
    modules = _modules()
    assert len(modules) > 50, "module walk found too few modules: check FOLDERS"
    wrong = []
    for module, path in sorted(modules.items()):
        is_cli = _is_under(module, "pagedc.cli") or module in ("pagedc.entry", "pagedc.__main__")
        allowed = _rule(module)
        for name in sorted(_pagedc_imports(path)):
            if name == "pagedc" or name == "pagedc.__version__" or _is_under(name, module):
                continue
            if allowed is not None and not any(_is_under(name, p) for p in allowed):
                wrong.append(f"{module} imports {name}")
            elif allowed is None and not is_cli and _is_under(name, "pagedc.cli"):
                wrong.append(f"{module} imports {name} (only the CLI imports the CLI)")
    assert wrong == [], "imports against the layout's arrows:\n" + "\n".join(wrong)
