"""One error hierarchy for everything a user can get wrong.

Library code raises these with what was expected, what was found, where
(file, input, node, layer, field) and what to do next; the CLI turns every
`PagedcError` into one `Error: ...` line and exit 1, in one place. Anything
else that escapes is a bug and keeps its traceback.

This module imports nothing from pagedc, so every stage (passes, compiler,
runtime) may raise its errors.

    PagedcError
    ├── ModelError      the source model or a compiled artifact cannot be read or handled
    ├── ManifestError   manifest.json is missing, malformed or disagrees with the artifacts
    ├── RequestError    a generation request or an option is invalid (also a ValueError)
    └── BackendError    ONNX Runtime or MIGraphX is missing or failed
"""

from __future__ import annotations


class PagedcError(Exception):
    """Base of every error pagedc reports to a user instead of a traceback."""


class ModelError(PagedcError):
    """The source model or a compiled artifact cannot be read, or pagedc cannot handle it."""


class ManifestError(PagedcError):
    """manifest.json is missing, malformed, or does not match the artifacts beside it."""


class RequestError(PagedcError, ValueError):
    """A request or option is invalid: bad token ids, lengths over a limit, a bad option value."""


class BackendError(PagedcError):
    """A backend (ONNX Runtime, MIGraphX) is missing, refused the model, or failed while running it."""
