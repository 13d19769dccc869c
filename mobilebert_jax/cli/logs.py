"""What the commands print besides their own lines: third-party logs only under `--verbose` / `--debug`.

Without them, a command shows its own progress, results and one-line errors; the libraries' INFO and
WARNING chatter (TensorFlow/LiteRT C++ logs such as oneDNN and XNNPACK notices, absl's "before
InitializeLog" line, onnx_ir's serializer warnings, a quantizer's progress bar) is dropped.
`--verbose` keeps all of it, and adds our INFO lines (e.g. the host allocator's tuning).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# C++ log lines of TensorFlow / LiteRT / absl that a user cannot act on, and progress bars of libraries.
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
    r"|INFO: Created TensorFlow Lite \w+ delegate"
    r"|INFO: Initialized TensorFlow Lite runtime"
    r"|.*\d+%\|.*\| *\d+/\d+ \[)"
)
_QUIET_LOGGERS = ("onnx_ir", "onnxscript", "jax2onnx", "absl", "tensorflow", "ai_edge_quantizer")


class _NoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def configure(verbose: bool, debug: bool = False) -> None:
    """Call first thing (before TensorFlow or LiteRT load): quiet third-party logs unless `verbose`.

    Without `debug`, absl's log (orbax, JAX) also loses its tracebacks: a failure is the one `error:`
    line, and `--debug` shows its cause."""
    if not debug:
        absl = logging.getLogger("absl")
        if not any(isinstance(f, _NoTraceback) for f in absl.filters):
            absl.addFilter(_NoTraceback())
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        logging.getLogger("mobilebert_jax").setLevel(logging.INFO)
        return
    os.environ.setdefault(
        "TF_CPP_MIN_LOG_LEVEL", "2"
    )  # TensorFlow / LiteRT C++ INFO and WARNING lines (errors stay)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_stderr(verbose: bool) -> Iterator[None]:
    """Runs the block with file descriptor 2 captured, then writes back what is not `_NOISE`.

    C++ libraries write to the descriptor directly, past Python's logging; a tqdm bar's updates
    arrive as one line of carriage returns and are dropped whole."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [
                line
                for line in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not _NOISE.match(line.rsplit("\r", 1)[-1]) and "\r" not in line.rstrip("\r\n")
            ]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
