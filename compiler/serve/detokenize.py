"""Incremental detokenization: the text of a sample as its tokens arrive, never splitting a character.

A byte-level BPE token may hold half of a UTF-8 character ("é" = 0xC3 0xA9 can
be two tokens), and a SentencePiece decoder drops the leading space of a
lone token; so a token's text is not decode([token]). vLLM's approach, over
ids: keep two offsets into the ids seen so far,

    ids:   ... p ............ r ........ (end)
               |- prefix -----|- new ---|

decode ids[p:r] (text already emitted, decoded with some left context) and
ids[p:] (the same plus the new tokens); the new text is the difference. While
it is empty or ends in U+FFFD (an unfinished character) nothing is emitted
and the offsets stay, so the next token completes the character; otherwise
p, r = r, end. The first offsets sit in the prompt's last tokens for context
(a SentencePiece word keeps its leading space), unless the prompt ends
inside a character: the output's text never takes bytes of the prompt.

Stop strings: text is held back by (longest stop string - 1) characters, so a
stop string arriving over several tokens is never partly streamed; once one
appears the text is cut before it and the sample is finished.
"""

from __future__ import annotations

from collections.abc import Sequence

CONTEXT_TOKENS = 5          # prompt tokens decoded with the first output tokens (vLLM uses 5)
REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, decode, prompt_ids: Sequence[int], stop: Sequence[str] = ()):
        """decode(ids) -> str (special tokens skipped); stop: strings that end the sample when they appear."""
        self._decode = decode
        self._ids = list(prompt_ids[-CONTEXT_TOKENS:])
        if decode(self._ids).endswith(REPLACEMENT):   # the prompt ends inside a character: keep its bytes out
            self._ids = []
        self._prefix_offset, self._read_offset = 0, len(self._ids)
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self.text = ""              # the sample's text so far (cut before a stop string once one is found)
        self._emitted = 0           # characters of `text` already returned
        self.is_stopped = False     # a stop string was found

    def add(self, token_id: int) -> str:
        """Take one sampled token; return the text that can be streamed now (often "")."""
        if self.is_stopped:
            return ""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
            self._append(full[len(prefix) :])
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._take(len(self.text) - self._hold)

    def finish(self) -> str:
        """The sample ended: return all text not yet returned (an unfinished character included, as U+FFFD)."""
        if not self.is_stopped and self._read_offset < len(self._ids):
            prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
            self._append(self._decode(self._ids[self._prefix_offset :])[len(prefix) :])
            self._read_offset = len(self._ids)
        return self._take(len(self.text))

    def _append(self, new_text: str) -> None:
        start = max(0, len(self.text) - self._hold)      # a stop string may begin in the held-back tail
        self.text += new_text
        found = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.is_stopped = True

    def _take(self, end: int) -> str:
        end = len(self.text) if self.is_stopped else max(end, self._emitted)
        delta, self._emitted = self.text[self._emitted : end], end
        return delta
