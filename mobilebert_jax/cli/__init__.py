"""The `mobilebert-jax` command: argument parsing for the jobs (finetune, evaluate, predict, convert, ...)."""
