"""Request bodies of the OpenAI API as pydantic models, and OpenAI's error shape.

Bodies are validated strictly from the raw JSON (`model_validate_json`): a
string where a number belongs is a 400, as on OpenAI, not coerced. Fields
OpenAI defines that pagedc does not implement are refused when set to a
non-default value (rather than silently ignored); unknown fields are ignored,
as vLLM does, since client libraries send extras. Extensions (as vLLM's):
`top_k`, `stop_token_ids` and `ignore_eos`.

    error JSON: {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PositiveInt = Annotated[int, Field(ge=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class ApiError(Exception):
    """An HTTP error in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None        # extension; 0 or -1: no top-k cut
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None   # extension
    ignore_eos: bool = False                                          # extension: do not stop on the model's eos
    stream: bool = False
    stream_options: StreamOptions | None = None
    # OpenAI fields pagedc does not implement: refused unless left at their defaults.
    logprobs: bool | int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    user: str | None = None

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def check_supported(self) -> None:
        unsupported = {"logprobs": self.logprobs not in (None, False, 0), "logit_bias": bool(self.logit_bias),
                       "presence_penalty": self.presence_penalty not in (None, 0),
                       "frequency_penalty": self.frequency_penalty not in (None, 0)}
        unsupported.update(self._unsupported())
        for name, is_set in unsupported.items():
            if is_set:
                raise ApiError(400, f"`{name}` is not supported by pagedc serve; leave it out", param=name)

    def _unsupported(self) -> dict[str, bool]:
        return {}


class CompletionRequest(_Sampling):
    prompt: Union[str, Annotated[list[str], Field(min_length=1)], TokenIds, Annotated[list[TokenIds], Field(min_length=1)]]
    max_tokens: PositiveInt | None = 16           # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def _unsupported(self) -> dict[str, bool]:
        return {"echo": self.echo, "suffix": bool(self.suffix), "best_of": self.best_of not in (None, self.n)}


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")    # name, tool_call_id ... go to the template
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def for_template(self) -> dict:
        """{"role", "content": str} plus any extra fields; text parts are joined as vLLM does."""
        content = self.content if isinstance(self.content, str) or self.content is None else \
            "\n".join(part.text for part in self.content)
        return {**(self.model_extra or {}), "role": self.role, "content": content}


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    tools: list | None = None
    response_format: dict | None = None

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def _unsupported(self) -> dict[str, bool]:
        return {"tools": bool(self.tools),
                "response_format": bool(self.response_format) and self.response_format.get("type") != "text"}


UNION_HINTS = {
    "prompt": "a string, a list of strings, a list of token ids or a list of token-id lists (none empty)",
    "stop": "a string or a list of at most 16 strings",
    "content": "a string or a list of {\"type\": \"text\", \"text\": ...} parts",
}


def parse(model: type[BaseModel], body: bytes) -> BaseModel:
    """Validate a JSON body; malformed JSON or a wrong field is an ApiError(400) naming the field."""
    if not body.strip():
        raise ApiError(400, "the request body is empty; send a JSON object (Content-Type: application/json)")
    try:
        request = model.model_validate_json(body)
    except ValidationError as err:
        raise _api_error(err.errors()) from None
    request.check_supported()
    return request


def _api_error(errors: list[dict]) -> ApiError:
    first = errors[0]
    if first["type"] == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {first['msg']}")
    if not first["loc"]:
        return ApiError(400, f"the request body must be a JSON object: {first['msg']}")
    # A union field fails once per member, each with the member's name in `loc`: report the field once.
    union = len(errors) > 1 and errors[1]["loc"][:1] == first["loc"][:1]
    path = [str(p) for p in first["loc"][: -1 if union else None] if not (union and "[" in str(p))]
    param = ".".join(path)
    if union:
        hint = UNION_HINTS.get(path[-1], "a value of another type")
        return ApiError(400, f"{param}: expected {hint}, got {_short(first['input'])}", param=param)
    got = "" if first["type"] == "missing" else f" (got {_short(first['input'])})"
    return ApiError(400, f"{param}: {first['msg']}{got}", param=param)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
