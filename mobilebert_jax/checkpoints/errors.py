"""The error every checkpoint reader raises, in a module of its own so the readers import no one else."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or unsafe, or does not fit its tokenizer."""
