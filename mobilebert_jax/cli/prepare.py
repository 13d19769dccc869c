"""`mobilebert-jax prepare-pretraining-data`: text shards -> ArrayRecord shards of MLM/NSP instances.

    mobilebert-jax prepare-pretraining-data 'corpus/*.txt' --output-dir data/pretrain-128 \\
        --max-seq-length 128 --dupe-factor 5 --num-workers 16

Input as BERT's `create_pretraining_data.py`: one sentence per line, a blank line between documents.
The instances are those of `pretrain` (same algorithm and seed), built per shard of about
`--shard-size-mb` in worker processes; rerunning the same command finishes an interrupted run.
`pretrain --train-file DIR` and `distill --train-file DIR` read the folder through Grain.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_prepare_arguments", "run_prepare"]


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `prepare-pretraining-data` flags to `parser`."""
    from mobilebert_jax.tasks.pretraining import PretrainingTask

    d = PretrainingTask()
    a = parser.add_argument
    a(
        "inputs",
        nargs="+",
        help="text files or globs (quote globs): one sentence per line, blank line between documents",
    )
    a("--output-dir", required=True, help="folder for dataset.json and the .arrayrecord shards")
    a(
        "--tokenizer",
        help="tokenizer folder (vocab.txt or tokenizer.json); default: the packaged uncased vocab",
    )
    a("--max-seq-length", type=int, default=128, help="tokens per instance, with [CLS] and two [SEP]")
    a(
        "--max-predictions-per-seq",
        type=int,
        default=d.max_predictions_per_seq,
        help="masked positions at most",
    )
    a("--masked-lm-prob", type=float, default=d.masked_lm_prob, help="fraction of tokens masked")
    a("--short-seq-prob", type=float, default=d.short_seq_prob, help="chance of a shorter target length")
    a("--dupe-factor", type=int, default=d.dupe_factor, help="passes over the text, each with other masks")
    a("--whole-word-mask", action="store_true", help="mask whole words (all their ## pieces)")
    a("--seed", type=int, default=d.seed, help="shard k uses random.Random(seed + k)")
    a("--shard-size-mb", type=float, default=8.0, help="text per shard (memory per worker grows with it)")
    a("--num-workers", type=int, default=None, help="worker processes (default: one per CPU; 0: in-process)")
    a("--no-progress", action="store_true", help="no progress bar")


def run_prepare(args: argparse.Namespace) -> int:
    """Runs `prepare-pretraining-data` with parsed `args`; returns the exit status."""
    from mobilebert_jax.tasks.pretraining_data import prepare_pretraining_data

    m = prepare_pretraining_data(
        args.inputs,
        args.output_dir,
        tokenizer=args.tokenizer,
        max_seq_length=args.max_seq_length,
        shard_size_mb=args.shard_size_mb,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        seed=args.seed,
        dupe_factor=args.dupe_factor,
        short_seq_prob=args.short_seq_prob,
        masked_lm_prob=args.masked_lm_prob,
        max_predictions_per_seq=args.max_predictions_per_seq,
        whole_word_mask=args.whole_word_mask,
    )
    summary = {k: m[k] for k in ("num_instances", "built_shards", "built_instances", "seconds")}
    summary["shards"] = len(m["shards"])
    summary["instances_per_second"] = m["built_instances"] / max(m["seconds"], 1e-9)
    print(f"prepare-pretraining-data: {args.output_dir}: {json.dumps(summary)}", flush=True)
    return 0
