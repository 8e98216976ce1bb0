"""Static KV buffers for the standard (dense) artifacts `--emit-standard` writes (pure NumPy).

A reference for `verify`: the dense model at static shapes, fed the way
manifest.standard["kv"] says (pagedc.mxr.standard documents both conventions):

    cache = StandardKVCache(manifest, batch=1)
    artifact, feeds = cache.feeds([prompt])              # prefill bucket
    outputs = run(artifact, feeds)                        # {output name: array}, any backend
    cache.update(artifact, outputs)                       # logits: outputs["logits"][:1]
    artifact, feeds = cache.feeds([[next_token]])        # decode bucket, and so on

Rows beyond the caller's sequences (bucket batch > len(tokens)) run one
dummy token 0 and are ignored.
"""

from __future__ import annotations

import numpy as np

from pagedc.errors import ManifestError, RequestError
from pagedc.manifest import Artifact, Bucket, Manifest


class StandardKVCache:
    """KV buffers of `batch` sequences run through a manifest's standard artifacts."""

    def __init__(self, manifest: Manifest, batch: int):
        note = manifest.standard
        if not manifest.standard_artifacts or not note:
            raise ManifestError("the manifest has no standard artifacts; compile with --emit-standard")
        self.artifacts, self.layout, self.max_context = manifest.standard_artifacts, note["kv"], note["max_context"]
        self.present = {p: q for pasts, presents in zip(note["past"], note["present"]) for p, q in zip(pasts, presents)}
        self.batch: int | None = None                          # B': the bucket batch every step then uses
        decode = self._artifact("decode", batch, 1)
        self.batch = decode.bucket().batch
        self.buffers = {name: np.zeros(decode.inputs[name], decode.dtypes[name]) for name in self.present}
        self.num_tokens = np.zeros(self.batch, np.int64)       # [B'] tokens held per row
        self._lengths = np.zeros(self.batch, np.int64)          # [B'] tokens of the step being fed

    def feeds(self, tokens: list[list[int]]) -> tuple[Artifact, dict[str, np.ndarray]]:
        """The artifact for this step (prefill while the cache is empty, else decode) and its feeds."""
        is_prefill = not self.num_tokens.any()
        seq_len = max(len(t) for t in tokens)
        if not is_prefill and seq_len != 1:
            raise RequestError(f"standard decode artifacts take one token per sequence, got {seq_len}")
        artifact = self._artifact("prefill" if is_prefill else "decode", len(tokens), seq_len)
        width = artifact.bucket().seq_len
        input_ids = np.zeros((self.batch, width), np.int64)                    # [B', S]
        self._lengths[:] = 1                                                     # dummy rows: token 0
        for b, row in enumerate(tokens):
            input_ids[b, : len(row)] = row
            self._lengths[b] = len(row)
        if int(self.num_tokens.max()) + width > self.max_context:
            raise RequestError(f"a step would reach {int(self.num_tokens.max()) + width} tokens; the standard artifacts "
                             f"hold {self.max_context} (--max-context)")
        feeds = {"input_ids": input_ids, **self._kv_feeds(is_prefill, width)}
        return artifact, {k: v.astype(artifact.dtypes[k], copy=False) for k, v in feeds.items() if k in artifact.inputs}

    def update(self, artifact: Artifact, outputs: dict[str, np.ndarray]) -> None:
        """Take the step's presents into the buffers."""
        is_prefill = artifact.phase == "prefill"
        for past, present in self.present.items():
            new = outputs[present]
            if self.layout == "shared_buffer":
                self.buffers[past] = new                                           # [B', Hkv, M, Dh]
            elif is_prefill:
                for b, length in enumerate(self._lengths):
                    self.buffers[past][b, :, :length] = new[b, :, :length]
            else:
                self.buffers[past][np.arange(self.batch), :, self.num_tokens] = new[:, :, -1]
        self.num_tokens += self._lengths

    def _kv_feeds(self, is_prefill: bool, width: int) -> dict[str, np.ndarray]:
        count, max_context = self.num_tokens, self.max_context
        position_ids = count[:, None] + np.arange(width)[None]                       # [B', S]
        if self.layout == "shared_buffer":
            seen = count + (width if is_prefill else 1)                              # padding counts as tokens
            mask = (np.arange(max_context)[None] < seen[:, None]).astype(np.int64)    # [B', M]
            return {"attention_mask": mask, "position_ids": position_ids, **self.buffers}
        if is_prefill:
            mask = (np.arange(width)[None] < self._lengths[:, None]).astype(np.int64)  # [B', S]
            empty = {name: buf[:, :, :0] for name, buf in self.buffers.items()}        # [B', Hkv, 0, Dh]
            return {"attention_mask": mask, "position_ids": position_ids, **empty}
        mask = (np.arange(max_context)[None] < count[:, None]).astype(np.int64)          # [B', M]
        mask[:, -1] = 1                                                                   # the new token
        return {"attention_mask": mask, "position_ids": position_ids, **self.buffers}

    def _artifact(self, phase: str, batch: int, seq_len: int) -> Artifact:
        fitting = [a for a in self.artifacts if a.phase == phase and Bucket(phase, batch, seq_len).fits(a.bucket())
                   and self.batch in (None, a.bucket().batch)]
        if not fitting:
            raise RequestError(f"no standard {phase} artifact takes {batch} sequence(s) x {seq_len} token(s); "
                             "recompile with --batch / --prefill-len covering it")
        return min(fitting, key=lambda a: a.bucket().batch * a.bucket().seq_len)
