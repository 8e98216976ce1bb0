"""The model's chat template, rendered with jinja2 the way transformers' `apply_chat_template` renders it.

transformers compiles `chat_template` (tokenizer_config.json, or a
chat_template.jinja beside it) in an `ImmutableSandboxedEnvironment` with
`trim_blocks`, `lstrip_blocks` and the loopcontrols extension, a `tojson`
filter that keeps non-ASCII text, and the globals `raise_exception` and
`strftime_now`; it renders with `messages`, `add_generation_prompt` and the
special tokens (`bos_token`, `eos_token`, ...) as strings. Doing the same
here makes a prompt token-for-token what the model was trained on, e.g.
SmolLM2's template gives

    <|im_start|>system\\nYou are a helpful AI assistant named SmolLM...<|im_end|>\\n
    <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pagedc.errors import ModelError, RequestError


class ChatTemplateError(RequestError):
    """The template refused the conversation (its raise_exception) or failed to render it."""


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str], origin: str = "chat_template"):
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateSyntaxError as err:
            raise ModelError(f"{origin}: the chat template is not valid jinja2 (line {err.lineno}: {err.message}); "
                             "fix it or pass --chat-template FILE") from None
        self.special_tokens = special_tokens

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` ([{"role": ..., "content": ...}]), ending with the assistant's turn."""
        import jinja2

        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         tools=None, documents=None, **self.special_tokens)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as err:
            raise ChatTemplateError(f"the model's chat template failed on these messages: {err}") from None

    @classmethod
    def find(cls, directory: Path, tokenizer_config: dict, special_tokens: dict[str, str]) -> "ChatTemplate | None":
        """chat_template.jinja in `directory`, else tokenizer_config["chat_template"] (a string, or named
        templates of which "default" is taken); None when the model has none."""
        path = directory / "chat_template.jinja"
        if path.is_file():
            return cls(path.read_text(), special_tokens, str(path))
        source = tokenizer_config.get("chat_template")
        if isinstance(source, list):    # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        if not isinstance(source, str) or not source:
            return None
        return cls(source, special_tokens, str(directory / "tokenizer_config.json"))


def _tojson(value, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str):
    raise ChatTemplateError(f"the model's chat template refused the messages: {message}")
