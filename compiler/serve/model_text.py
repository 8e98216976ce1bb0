"""What the server needs to turn text into token ids and back: the files `pagedc compile` copied.

    tokenizer.json           -> the tokenizer (required)
    tokenizer_config.json    -> chat_template, eos_token, bos_token, ...
    chat_template.jinja      -> the chat template, when the model ships it as its own file
    special_tokens_map.json  -> eos_token (older models)
    generation_config.json   -> eos_token_id (int or list), default temperature / top_p / top_k

The stop tokens of a request are the union of every eos the files name, as
transformers' `generate` and vLLM stop on any of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pagedc.errors import ModelError
from pagedc.serve.chat_template import ChatTemplate

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
SAMPLING_DEFAULTS = ("temperature", "top_p", "top_k")


@dataclass
class ModelText:
    tokenizer: object                      # tokenizers.Tokenizer
    chat_template: ChatTemplate | None
    eos_token_ids: frozenset[int]
    sampling_defaults: dict = field(default_factory=dict)   # from generation_config.json

    @classmethod
    def load(cls, directory: Path, chat_template_path: Path | None = None) -> "ModelText":
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise ModelError(f"{directory}: no tokenizer.json; `pagedc serve` needs one to read and write text. "
                             "Put the model's tokenizer.json beside the source model and recompile, or copy it here")
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # the tokenizers library raises plain Exception on a bad file
            raise ModelError(f"{path}: not a tokenizer.json the tokenizers library can read ({err})") from None
        config = _json(directory / "tokenizer_config.json")
        special = {**_special_tokens(_json(directory / "special_tokens_map.json")), **_special_tokens(config)}
        generation = _json(directory / "generation_config.json")
        if chat_template_path is not None:
            template = ChatTemplate(chat_template_path.read_text(), special, str(chat_template_path))
        else:
            template = ChatTemplate.find(directory, config, special)
        return cls(tokenizer, template, _eos_ids(tokenizer, special, generation),
                   {k: generation[k] for k in SAMPLING_DEFAULTS if isinstance(generation.get(k), (int, float))})

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: not valid JSON ({err}); fix or remove it") from None
    return data if isinstance(data, dict) else {}


def _special_tokens(config: dict) -> dict[str, str]:
    """{"eos_token": "<|im_end|>", ...}; a token may be written as {"content": "<|im_end|>", ...} (AddedToken)."""
    tokens = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    return tokens


def _eos_ids(tokenizer, special: dict[str, str], generation: dict) -> frozenset[int]:
    ids = generation.get("eos_token_id")
    ids = set(ids if isinstance(ids, list) else [ids] if isinstance(ids, int) else [])
    if "eos_token" in special and tokenizer.token_to_id(special["eos_token"]) is not None:
        ids.add(tokenizer.token_to_id(special["eos_token"]))
    return frozenset(i for i in ids if isinstance(i, int))
