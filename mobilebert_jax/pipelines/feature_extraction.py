"""feature-extraction: the encoder's last hidden state (or pooled output), as HF's `FeatureExtractionPipeline`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mobilebert_jax.pipelines.base import Pipeline, encode_rows

OUTPUTS = ("last_hidden_state", "pooler_output")


class FeatureExtractionPipeline(Pipeline):
    """`pipe("some text")` → nested lists `[1, T, H]` (HF's form: one row, every token incl. [CLS]/[SEP]).

    `return_tensors=True` gives a float32 numpy array `[1, T, H]` instead; `output="pooler_output"`
    gives the pooled vector `[1, H]` (the raw [CLS] vector when `classifier_activation` is False, as
    the hub's MobileBERT). Pairs: `{"text": ..., "text_pair": ...}`.
    """

    task = "feature-extraction"
    call_parameters = ("return_tensors", "output")
    per_token = ("last_hidden_state",)

    def _is_single(self, inputs: Any) -> bool:
        return isinstance(inputs, (str, Mapping))

    def _validate(self, item: Any, index: int) -> tuple[str, str | None]:
        if isinstance(item, str):
            return item, None
        if isinstance(item, Mapping) and isinstance(item.get("text"), str):
            pair = item.get("text_pair")
            if pair is None or isinstance(pair, str):
                return item["text"], pair
        raise TypeError(f"feature-extraction: input {index} must be a str or {{'text', 'text_pair'}}")

    def _features(self, items, params):
        out: list = [None] * len(items)
        for with_pair in (False, True):
            group = [i for i, (_, p) in enumerate(items) if (p is not None) == with_pair]
            if group:
                texts = [items[i][0] for i in group]
                pairs = [items[i][1] for i in group] if with_pair else None
                for i, row in zip(
                    group, encode_rows(self.tokenizer, texts, pairs, max_length=self.max_length)
                ):
                    out[i] = [row]
        return out

    def _answer(self, item, features, outputs, params):
        key = params.get("output", "last_hidden_state")
        if key not in OUTPUTS:
            raise ValueError(f"feature-extraction: output must be one of {OUTPUTS}, got {key!r}")
        if key not in outputs[0]:
            raise ValueError(f"feature-extraction: the model gives no {key} (outputs: {sorted(outputs[0])})")
        value = np.asarray(outputs[0][key], np.float32)[None]
        return value if params.get("return_tensors") else value.tolist()
