"""`python -m mobilebert_jax.cli ...` is the `mobilebert-jax` command."""

import sys

from mobilebert_jax.cli.main import main

sys.exit(main())
