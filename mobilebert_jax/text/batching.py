"""Batch helpers of the tokenizer: HF's batching rules, int checks, right-padding into int32 arrays."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np


def clean_up_tokenization(text: str) -> str:
    # HF's `PreTrainedTokenizerBase.clean_up_tokenization`.
    for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't")):
        text = text.replace(old, new)
    for old, new in ((" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(old, new)
    return text


def as_batch(text: Any, name: str, split_into_words: bool) -> tuple[bool, list]:
    """(is_batched, examples) by HF's rules: a list is a batch; with pre-split words, a list of lists."""
    if split_into_words:
        batched = isinstance(text, (list, tuple)) and bool(text) and not isinstance(text[0], str)
        for i, words in enumerate(text if batched else [text]):
            where = f"{name}[{i}]" if batched else name
            if not isinstance(words, (list, tuple)):
                raise TypeError(
                    f"{where} must be a list of str words (is_split_into_words), got {words!r:.60}"
                )
            for j, word in enumerate(words):
                if not isinstance(word, str):
                    raise TypeError(f"{where}[{j}] is {type(word).__name__}, expected a str word")
        return batched, [list(words) for words in (text if batched else [text])]
    if isinstance(text, str):
        return False, [text]
    if not isinstance(text, (list, tuple)):
        raise TypeError(f"{name} must be a str or a list of str, got {type(text).__name__}")
    for i, item in enumerate(text):
        if not isinstance(item, str):
            raise TypeError(
                f"{name}[{i}] is {type(item).__name__} ({item!r:.60}), expected str; pass pairs as "
                "text=[...], text_pair=[...] and pre-split words with is_split_into_words=True"
            )
    return True, list(text)


def check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def pack(rows: list, lengths: np.ndarray, target: int, fill: Any, tail: tuple = ()) -> np.ndarray | list:
    """Right-pads rows to `max(length, target)`: an int32 `[n, width, *tail]` array, or a list of
    1-D arrays when the widths differ (no padding, or rows longer than `target`)."""
    widths = np.maximum(lengths, target)
    flat = np.asarray(list(itertools.chain.from_iterable(rows)), np.int32).reshape((-1, *tail))
    if len(rows) == 0 or (widths == widths[0]).all():
        width = int(widths[0]) if len(rows) else target
        out = np.full((len(rows), width, *tail), fill, np.int32)
        out[np.arange(width) < lengths[:, None]] = flat
        return out
    ragged = [np.full((int(w), *tail), fill, np.int32) for w in widths]
    for row, values in zip(ragged, np.split(flat, np.cumsum(lengths)[:-1])):
        row[: len(values)] = values
    return ragged


def to_lists(value: np.ndarray | list, unbatch: bool) -> list:
    """HF's `return_tensors=None` form: nested lists, offsets as tuples, a single example unbatched."""
    rows = [r.tolist() for r in value] if isinstance(value, list) else value.tolist()
    if np.ndim(value[0] if isinstance(value, list) and value else value) == (
        2 if isinstance(value, list) else 3
    ):
        rows = [[tuple(p) for p in r] for r in rows]
    return rows[0] if unbatch and rows and isinstance(rows[0], list) else rows
