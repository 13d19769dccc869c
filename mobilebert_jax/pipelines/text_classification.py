"""text-classification: labels from the model's `id2label`, HF's `TextClassificationPipeline` conventions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mobilebert_jax.pipelines.base import Pipeline, encode_rows, softmax

FUNCTIONS = ("default", "softmax", "sigmoid", "none")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class TextClassificationPipeline(Pipeline):
    """`pipe("a gripping film")` → `[{"label": "POSITIVE", "score": 0.98}]`.

    Inputs: a text, `{"text": ..., "text_pair": ...}` for pairs, or a list / iterable of either.
    As HF: without `top_k` each input gives its best `{label, score}` (a single string gives a list of
    one); `top_k=k` gives the k best, sorted, per input (`top_k=None`: all labels).
    `function_to_apply`: "default" is sigmoid for `problem_type="multi_label_classification"` or one
    label, none for regression, softmax otherwise; or "softmax", "sigmoid", "none".
    """

    task = "text-classification"
    call_parameters = ("top_k", "function_to_apply")

    def _is_single(self, inputs: Any) -> bool:
        return isinstance(inputs, (str, Mapping))

    def _wrap_single(self, inputs: Any, answer: Any, params: dict[str, Any]) -> Any:
        # HF: a single string without top_k gives a list of one; a single pair gives the dict.
        return [answer] if isinstance(inputs, str) and "top_k" not in params else answer

    def _validate(self, item: Any, index: int) -> tuple[str, str | None]:
        if isinstance(item, str):
            return item, None
        if isinstance(item, Mapping):
            unknown = set(item) - {"text", "text_pair"}
            if "text" not in item or unknown:
                raise ValueError(
                    f"text-classification: input {index} must be {{'text': ..., 'text_pair': ...}}, got keys "
                    f"{sorted(item)}"
                )
            pair = item.get("text_pair")
            if not isinstance(item["text"], str) or not (pair is None or isinstance(pair, str)):
                raise TypeError(f"text-classification: input {index}: text and text_pair must be str")
            return item["text"], pair
        if isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            return item[0], item[1]
        raise TypeError(
            f"text-classification: input {index} must be a str or {{'text', 'text_pair'}}, got {item!r:.80}"
        )

    def _features(self, items, params):
        out: list = [None] * len(items)
        singles = [i for i, (_, p) in enumerate(items) if p is None]
        pairs = [i for i, (_, p) in enumerate(items) if p is not None]
        for group, with_pair in ((singles, False), (pairs, True)):
            if not group:
                continue
            texts = [items[i][0] for i in group]
            second = [items[i][1] for i in group] if with_pair else None
            for i, row in zip(group, encode_rows(self.tokenizer, texts, second, max_length=self.max_length)):
                out[i] = [row]
        return out

    def _function(self, name: str | None) -> str:
        name = (name or "default").lower()
        if name not in FUNCTIONS:
            raise ValueError(f"function_to_apply must be one of {FUNCTIONS}, got {name!r}")
        if name != "default":
            return name
        cfg = self.config
        if cfg.problem_type == "regression":
            return "none"
        if cfg.problem_type == "multi_label_classification" or cfg.num_labels == 1:
            return "sigmoid"
        return "softmax"

    def _answer(self, item, features, outputs, params):
        logits = outputs[0]["logits"].astype(np.float32)
        fn = self._function(params.get("function_to_apply"))
        scores = {"softmax": softmax, "sigmoid": sigmoid, "none": lambda x: x}[fn](logits)
        labels = self.config.id2label
        if "top_k" not in params:
            best = int(scores.argmax())
            return {"label": labels[best], "score": float(scores[best])}
        top_k = params["top_k"]
        ranked = [{"label": labels[i], "score": float(s)} for i, s in enumerate(scores)]
        ranked.sort(key=lambda d: d["score"], reverse=True)
        return ranked if top_k is None else ranked[: int(top_k)]
