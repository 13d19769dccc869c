"""Multi-process flags shared by the job commands and `distill`: `--distributed` and its addresses.

    mobilebert-jax finetune ... --distributed                          # TPU pod, SLURM: auto-detected
    mobilebert-jax finetune ... --distributed --coordinator-address host0:1234 \\
        --num-processes 2 --process-id 0                               # anywhere else, on every host

The three values may also come from `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID`; `MOBILEBERT_JAX_DISTRIBUTED=1` stands for `--distributed`.
"""

from __future__ import annotations

import argparse


def add_distributed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() before anything else (multi-host TPU/GPU, several CPU "
        "processes; also via MOBILEBERT_JAX_DISTRIBUTED=1). Implied by the three flags below",
    )
    p.add_argument(
        "--coordinator-address",
        metavar="HOST:PORT",
        help="process 0's address, the same on every process (env JAX_COORDINATOR_ADDRESS)",
    )
    p.add_argument("--num-processes", type=int, help="number of processes (env JAX_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, help="this process's index, 0-based (env JAX_PROCESS_ID)")


def initialize_distributed(args: argparse.Namespace) -> bool:
    """`jax.distributed.initialize` when `--distributed` (or an address flag, or the env var) asks for it."""
    from mobilebert_jax.training.sharding import maybe_initialize_distributed

    given = [args.coordinator_address, args.num_processes, args.process_id]
    enable = True if (args.distributed or any(v is not None for v in given)) else None
    return maybe_initialize_distributed(
        enable,
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
