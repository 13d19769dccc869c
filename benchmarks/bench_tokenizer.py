"""Batch-encoding throughput: MobileBertTokenizer vs HF's fast BERT tokenizer on SQuAD v1.1 dev.

Both tokenizers run in the same process on the same texts, alternating, and their outputs are
checked equal before timing. Prints median wall time per pass, texts/s, tokens/s and the ratio
HF time / our time (> 1: ours is faster).

    python benchmarks/bench_tokenizer.py [--squad ../shared/data/squad/dev-v1.1.json] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mobilebert_jax.text.tokenizer import MobileBertTokenizer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SQUAD = ROOT.parent / "shared" / "data" / "squad" / "dev-v1.1.json"


def load_squad(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(paragraph contexts, questions, the context of each question) of a SQuAD v1.1 json file."""
    articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    paragraphs = [p for a in articles for p in a["paragraphs"]]
    questions = [qa["question"] for p in paragraphs for qa in p["qas"]]
    question_contexts = [p["context"] for p in paragraphs for _ in p["qas"]]
    return [p["context"] for p in paragraphs], questions, question_contexts


def time_pair(ours: Callable, ref: Callable, repeats: int) -> tuple[float, float]:
    """Median seconds of `ours()` and `ref()`, run alternately after one warm-up call each."""
    ours(), ref()
    t_ours, t_ref = [], []
    for _ in range(repeats):
        for fn, times in ((ours, t_ours), (ref, t_ref)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--squad", type=Path, default=DEFAULT_SQUAD, help="SQuAD v1.1 dev json")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per tokenizer and scenario")
    args = parser.parse_args()
    if not args.squad.is_file():
        raise SystemExit(f"SQuAD file not found: {args.squad} (pass --squad)")
    import tokenizers
    import transformers

    warnings.simplefilter("ignore")
    contexts, questions, question_contexts = load_squad(args.squad)
    ours = MobileBertTokenizer.default()
    vocab = ROOT / "mobilebert_jax" / "data" / "vocab.txt"
    hf = transformers.BertTokenizer(vocab=str(vocab))
    print(
        f"tokenizers {tokenizers.__version__}, transformers {transformers.__version__}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {platform.processor() or platform.machine()}"
    )
    print(f"SQuAD: {len(contexts)} contexts, {len(questions)} questions; median of {args.repeats} passes\n")
    squad_features = dict(
        truncation="only_second",
        max_length=384,
        stride=128,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    scenarios = [
        (
            "contexts, pad to longest, truncate at 512 -> numpy",
            (contexts,),
            dict(padding=True, truncation=True, max_length=512),
            dict(return_tensors="np"),
        ),
        (
            "contexts, no padding, no truncation -> per-row ids",
            (contexts,),
            dict(truncation=False),
            dict(return_tensors=None),
        ),
        (
            "SQuAD features (question, context) only_second 384/128, overflow + offsets, pad -> numpy",
            (questions, question_contexts),
            squad_features,
            dict(return_tensors="np"),
        ),
    ]
    print(
        f"{'scenario':<92} {'ours s':>8} {'HF s':>8} {'texts/s ours':>13} {'tokens/s ours':>14} {'HF/ours':>8}"
    )
    for name, inputs, kwargs, hf_extra in scenarios:
        got = ours(*inputs, **kwargs)
        want = hf(*inputs, **kwargs, **hf_extra)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert all(np.array_equal(a, b) for a, b in zip(got[key], want[key])), f"{name}: {key} differs"
        n_tokens = int(sum(np.count_nonzero(row) for row in got["attention_mask"]))
        t_ours, t_ref = time_pair(
            lambda inputs=inputs, kwargs=kwargs: ours(*inputs, **kwargs),
            lambda inputs=inputs, kwargs=kwargs, extra=hf_extra: hf(*inputs, **kwargs, **extra),
            args.repeats,
        )
        texts_per_s = len(inputs[0]) / t_ours
        print(
            f"{name:<92} {t_ours:8.3f} {t_ref:8.3f} {texts_per_s:13,.0f} {n_tokens / t_ours:14,.0f} "
            f"{t_ref / t_ours:8.2f}"
        )


if __name__ == "__main__":
    main()
