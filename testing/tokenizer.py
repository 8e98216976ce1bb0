"""A small byte-level BPE tokenizer trained in-process, with a ChatML chat template: text for tests and examples.

    vocab_size = write_tokenizer_files(directory)      # tokenizer.json, tokenizer_config.json, generation_config.json
    DecoderConfig(vocab_size=vocab_size, ...)          # a reference decoder whose ids it can decode

Byte-level like GPT-2 / SmolLM2 (every byte is a token, so any id sequence
decodes, and a multi-byte character can span tokens); trained on a few
sentences that include accented letters, CJK and an emoji. Special tokens
and the template follow SmolLM2's: <|endoftext|> (id 0), <|im_start|>,
<|im_end|> (the chat eos).
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TRAINING_TEXT = [
    "Once upon a time there was a small model that served requests over HTTP.",
    "The quick brown fox jumps over the lazy dog while the engine decodes tokens in batches.",
    "Paged attention stores keys and values in blocks; a block table maps positions to blocks.",
    "Héllo wörld, crème brûlée, naïve café: accents are two bytes in UTF-8.",
    "日本語のテキストと絵文字 🙂🚀 are three and four bytes per character.",
    "User: what is the capital of France? Assistant: Paris is the capital of France.",
]


def write_tokenizer_files(directory: Path, vocab_size: int = 320) -> int:
    """Train the tokenizer, write its files into `directory`; returns its vocabulary size (special tokens included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TRAINING_TEXT * 4, trainer)
    directory = Path(directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
              "pad_token": "<|im_end|>", "chat_template": CHATML_TEMPLATE, "model_max_length": 2048}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    eos_ids = [tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_end|>")]
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}) + "\n")
    return tokenizer.get_vocab_size(with_added_tokens=True)
