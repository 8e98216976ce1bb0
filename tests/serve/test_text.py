"""Text in and out of the server, without HTTP: incremental detokenization, stop strings, chat templates."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("jinja2", reason="chat templates need the serve extra: pip install -e '.[serve]'")

from pagedc.serve.chat_template import ChatTemplate, ChatTemplateError  # noqa: E402
from pagedc.serve.detokenize import IncrementalDetokenizer  # noqa: E402
from pagedc.serve.model_text import ModelText  # noqa: E402
from pagedc.testing.tokenizer import write_tokenizer_files  # noqa: E402

MULTIBYTE = "Héllo wörld: 日本語 🙂🚀 café"


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> ModelText:
    directory = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer_files(directory)
    return ModelText.load(directory)


def _stream(text: ModelText, ids: list[int], prompt=(), stop=()) -> tuple[list[str], IncrementalDetokenizer]:
    detokenizer = IncrementalDetokenizer(text.decode, list(prompt), stop)
    chunks = [detokenizer.add(token) for token in ids]
    return chunks + [detokenizer.finish()], detokenizer


def test_multibyte_characters_are_never_split(text):
    ids = text.encode(MULTIBYTE, add_special_tokens=False)
    assert any("\ufffd" in text.decode([t]) for t in ids), "the text should have characters spanning tokens"
    chunks, _ = _stream(text, ids, prompt=text.encode("Say: ", add_special_tokens=False))
    assert "".join(chunks) == MULTIBYTE
    assert not any("\ufffd" in chunk for chunk in chunks)
    assert sum(1 for c in chunks if c) > 10                  # streamed as it goes, not all at the end


def test_an_unfinished_character_is_flushed_at_the_end(text):
    ids = text.encode("ok 日", add_special_tokens=False)
    first_byte_of_emoji = text.tokenizer.token_to_id("ð")  # byte-level symbol of 0xF0, an emoji's first byte
    chunks, _ = _stream(text, ids + [first_byte_of_emoji])
    assert "".join(chunks) == text.decode(ids + [first_byte_of_emoji]) == "ok 日\ufffd"


def test_special_tokens_are_not_text(text):
    ids = text.encode("hi", add_special_tokens=False) + [text.tokenizer.token_to_id("<|im_end|>")]
    assert "".join(_stream(text, ids)[0]) == "hi"


def test_a_stop_string_over_several_tokens_is_cut_and_never_streamed(text):
    ids = text.encode("The quick brown fox jumps over the lazy dog", add_special_tokens=False)
    chunks, detokenizer = _stream(text, ids, stop=["fox jum", "zzz"])
    assert detokenizer.is_stopped and detokenizer.text == "The quick brown "
    assert "".join(chunks) == "The quick brown "
    assert not any("fox" in chunk for chunk in chunks)


def test_chat_template_renders_as_transformers_does(text):
    rendered = text.chat_template.render([{"role": "user", "content": "Hi"}])
    assert rendered == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    # trim_blocks + lstrip_blocks: block tags eat their own line; tojson keeps non-ASCII; special tokens are set
    template = ChatTemplate("{% for m in messages %}\n  {% if m.role == 'user' %}\n{{ m.content | tojson }}\n"
                            "  {% endif %}\n{% endfor %}{{ eos_token }}", {"eos_token": "</s>"})
    assert template.render([{"role": "user", "content": "café"}]) == '"café"\n</s>'


def test_raise_exception_in_a_template_is_a_request_error():
    template = ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}"
                            "{% endif %}ok", {})
    assert template.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(ChatTemplateError, match="first must be user"):
        template.render([{"role": "assistant", "content": "x"}])


def test_eos_ids_come_from_tokenizer_and_generation_config(tmp_path):
    write_tokenizer_files(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 1, "temperature": 0.6}))
    loaded = ModelText.load(tmp_path)
    assert loaded.eos_token_ids == {1, 2}                  # <|im_start|> from generation_config, <|im_end|> eos_token
    assert loaded.sampling_defaults == {"temperature": 0.6}
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert ModelText.load(tmp_path).chat_template is None
