"""fill-mask: the top-k tokens for every `[MASK]`, as HF's `FillMaskPipeline`."""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilebert_jax.pipelines.base import Pipeline, encode_rows, softmax


class FillMaskPipeline(Pipeline):
    """`pipe("the capital of france is [MASK].", top_k=5)` → `[{score, token, token_str, sequence}]`.

    With several masks in one input the answer is one such list per mask (HF's experimental
    multi-mask output: each mask's distribution on its own, the sequence shows one mask filled and
    keeps the special tokens). `targets` restricts the candidates to the given tokens (a token
    outside the vocabulary is replaced by its first word piece, as HF does). A list of inputs gives a
    list of answers, also for a list of one (HF unwraps that one).
    """

    task = "fill-mask"
    call_parameters = ("top_k", "targets")
    per_token = ("logits",)

    def _validate(self, item: Any, index: int) -> str:
        if not isinstance(item, str):
            raise TypeError(f"fill-mask: input {index} must be a str, got {type(item).__name__}")
        return item

    def _features(self, items, params):
        rows = encode_rows(self.tokenizer, items, max_length=self.max_length)
        mask_id = self.tokenizer.mask_token_id
        for i, r in enumerate(rows):
            if not (r["input_ids"] == mask_id).any():
                raise ValueError(
                    f"fill-mask: input {items[i]!r:.80} has no {self.tokenizer.mask_token} token"
                )
        return [[r] for r in rows]

    def _target_ids(self, targets: Any) -> np.ndarray | None:
        if targets is None:
            return None
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
        cache = self.__dict__.setdefault("_targets_cache", {})
        if targets not in cache:
            cache[targets] = self._lookup_targets(targets)
        return cache[targets]

    def _lookup_targets(self, targets: tuple[str, ...]) -> np.ndarray:
        vocab = self.tokenizer.get_vocab()
        ids = []
        for t in targets:
            i = vocab.get(t)
            if i is None:
                pieces = self.tokenizer(t, add_special_tokens=False, return_tensors=None)["input_ids"]
                if not pieces:
                    continue
                i = pieces[0]
            ids.append(int(i))
        if not ids:
            raise ValueError("fill-mask: none of the targets maps to a token")
        return np.array(sorted(set(ids)))

    def _answer(self, item, features, outputs, params):
        top_k = int(params.get("top_k", 5))
        target_ids = self._target_ids(params.get("targets"))
        ids = features[0]["input_ids"]
        masked = np.flatnonzero(ids == self.tokenizer.mask_token_id)
        probs = softmax(outputs[0]["logits"][masked].astype(np.float32))
        if target_ids is not None:
            probs = probs[:, target_ids]
        k = min(top_k, probs.shape[-1])
        single = len(masked) == 1
        result = []
        for m, row in zip(masked, probs):
            top = np.argsort(-row, kind="stable")[:k]
            answers = []
            for p in top:
                token = int(target_ids[p] if target_ids is not None else p)
                filled = ids.copy()
                filled[m] = token
                answers.append(
                    {
                        "score": float(row[p]),
                        "token": token,
                        "token_str": self.tokenizer.decode([token]),
                        "sequence": self.tokenizer.decode(filled, skip_special_tokens=single),
                    }
                )
            result.append(answers)
        return result[0] if single else result
