"""token-classification (NER): HF's `TokenClassificationPipeline` with its five aggregation strategies.

Word aggregation ("first", "average", "max") is `tasks.ner.aggregate_words`, the function the NER
task decodes with. What HF calls a word here is its own rule, kept for parity: a token continues
the previous word when its text is shorter than the token (a `##` piece); the task instead knows
its words from the CoNLL file. Entity grouping is HF's `group_entities` (a display rule: `B-` starts
a group, any other tag with the same type continues it), not seqeval's chunking the NER metric uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilebert_jax.pipelines.base import Pipeline, encode_rows, softmax
from mobilebert_jax.tasks.ner import aggregate_words

STRATEGIES = ("none", "simple", "first", "average", "max")


def _tag(label: str) -> tuple[str, str]:
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


class TokenClassificationPipeline(Pipeline):
    """`pipe("Angela Merkel visited Paris", aggregation_strategy="simple")` →
    `[{"entity_group": "PER", "score", "word": "angela merkel", "start": 0, "end": 13}, ...]`.

    With `aggregation_strategy="none"` (the default, as HF) every token not labelled with one of
    `ignore_labels` (default ["O"]) is returned as `{entity, score, index, word, start, end}`;
    `start`/`end` are character offsets into the input. Inputs longer than the model are truncated.
    """

    task = "token-classification"
    call_parameters = ("aggregation_strategy", "ignore_labels")
    per_token = ("logits",)

    def _validate(self, item: Any, index: int) -> str:
        if not isinstance(item, str):
            raise TypeError(f"token-classification: input {index} must be a str, got {type(item).__name__}")
        return item

    def _features(self, items, params):
        rows = encode_rows(
            self.tokenizer,
            items,
            max_length=self.max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        return [[r] for r in rows]

    def _to_string(self, tokens: list[str]) -> str:
        decoder = self.tokenizer.backend_tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def _answer(self, item, features, outputs, params):
        strategy = (params.get("aggregation_strategy") or "none").lower()
        if strategy not in STRATEGIES:
            raise ValueError(f"aggregation_strategy must be one of {STRATEGIES}, got {strategy!r}")
        ignore = params.get("ignore_labels")
        ignore = ["O"] if ignore is None else list(ignore)
        f = features[0]
        scores = softmax(outputs[0]["logits"].astype(np.float32))
        labels = self.config.id2label
        unk = self.tokenizer.unk_token_id
        keep = np.flatnonzero(f["special_tokens_mask"] == 0)
        tokens = []  # (index, word piece, start, end, is_subword)
        for idx in keep:
            tid = int(f["input_ids"][idx])
            piece = self.tokenizer.convert_ids_to_tokens(tid)
            start, end = (int(x) for x in f["offset_mapping"][idx])
            ref = item[start:end]
            subword = len(piece) != len(ref)
            if tid == unk:
                piece, subword = ref, False
            tokens.append((int(idx), piece, start, end, subword))
        if strategy in ("none", "simple"):
            entities = []
            for idx, piece, start, end, _ in tokens:
                best = int(scores[idx].argmax())
                entities.append(
                    {
                        "entity": labels[best],
                        "score": float(scores[idx, best]),
                        "index": idx,
                        "word": piece,
                        "start": start,
                        "end": end,
                    }
                )
        else:
            word_of_token = np.full(len(scores), -1, np.int64)
            if tokens:
                starts = [i == 0 or not t[4] for i, t in enumerate(tokens)]
                word_of_token[[t[0] for t in tokens]] = np.cumsum(starts) - 1
            by_index = {t[0]: t for t in tokens}
            entities = []
            for w in aggregate_words(scores, word_of_token, strategy):
                pieces = [by_index[i][1] for i in range(w.first, w.last + 1) if i in by_index]
                entities.append(
                    {
                        "entity": labels[w.label],
                        "score": w.score,
                        "word": self._to_string(pieces),
                        "start": by_index[w.first][2],
                        "end": by_index[w.last][3],
                    }
                )
        if strategy != "none":
            entities = self._group(entities)
        return [e for e in entities if e.get("entity") not in ignore and e.get("entity_group") not in ignore]

    def _group(self, entities: list[dict]) -> list[dict]:
        """HF's `group_entities`: adjacent entities of one type, a `B-` tag starting a new group."""
        groups, current = [], []
        for e in entities:
            if current:
                bi, tag = _tag(e["entity"])
                _, last_tag = _tag(current[-1]["entity"])
                if not (tag == last_tag and bi != "B"):
                    groups.append(current)
                    current = []
            current.append(e)
        if current:
            groups.append(current)
        return [
            {
                "entity_group": g[0]["entity"].split("-", 1)[-1],
                "score": float(np.nanmean([e["score"] for e in g])),
                "word": self._to_string([e["word"] for e in g]),
                "start": g[0]["start"],
                "end": g[-1]["end"],
            }
            for g in groups
        ]
