"""A real multi-process run: 2 processes × 4 CPU devices (gloo collectives, loopback coordinator).

The same `mobilebert-jax finetune ... --distributed` command runs in both processes (through
`multiprocess_job.py`, which logs the example ids each process reads). The 2-process run starts on a
`data=8` mesh, writes a checkpoint from both processes, is killed with SIGKILL (both processes) and
is restarted on a `data=4 × fsdp=2` mesh (the checkpoint is restored onto the new shardings) to the
end. A single-process 8-device run of the same command is the reference: the checkpoint before the
kill and the final model after the restart equal it (≤ 1e-6 relative), and the two processes read
disjoint halves of every batch whose union is the reference's batch.

After the finetune, the restarted 2-process run and the reference run, in the same processes, a
pretraining job reading a prepared ArrayRecord folder through Grain (`multiprocess_job.py`'s
MBJ_TEST_THEN): each process reads its own rows of every global batch (rows told apart by a hash of
their arrays, all distinct in the folder), together the reference's rows, every row of the folder in
an epoch; the final params equal the 1-process run's. The 2-process pretraining job reads its prepared
folder from a Cloud Storage bucket and writes its output dir there (fake-gcs-server, conftest's
`gcs_emulator`): only process 0 writes run.json, metrics and the export, both write the checkpoints.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import rel_err, save_random_pretraining_model

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEMO = os.path.join(ROOT, "mobilebert_jax", "data", "qnli_demo")
STEPS, SAVE, BATCH, N_TRAIN = 8, 4, 16, 64  # 4 batches of 16 per epoch, 2 epochs
PT_STEPS, PT_DOCS = 4, 20  # the Grain phase: 20 QNLI documents -> 31 instances; 4 batches of 16
DEADLINE = 480  # seconds for the whole test (a loaded 2-core machine); every wait is bounded by it


def _job(out: str) -> list[str]:
    return [
        sys.executable,
        os.path.join(HERE, "multiprocess_job.py"),
        "finetune",
        "--task=qnli",
        "--model=mobilebert-test",
        '--model-config={"vocab_size": 30522, "num_hidden_layers": 1}',
        f"--train-file={DEMO}/train.tsv",
        f"--validation-file={DEMO}/dev.tsv",
        f"--max-train-samples={N_TRAIN}",
        "--max-eval-samples=16",
        "--max-seq-length=32",
        "--per-device-train-batch-size=2",  # x 8 devices = the global batch of 16
        "--per-device-eval-batch-size=2",
        f"--max-steps={STEPS}",
        f"--save-steps={SAVE}",
        "--logging-steps=1",
        "--no-progress",
        f"--output-dir={out}",
    ]


def _pretrain_job(model: str, data: str, out: str) -> list[str]:
    """The second command of a process (MBJ_TEST_THEN): MLM+NSP on a prepared folder, read through Grain."""
    return [
        "finetune",
        "--task=pretraining",
        "--do-train",
        # HF's padded embeddings: with pad_invariant on (the default, run by the first phase), one ReLU
        # input of this data sits at its kink, and float-order noise (1e-9) flips it: 3.3e-5 on one of
        # the 32 intermediate biases of layer 0, <= 6e-7 on every other param (measured)
        "--pad-invariant=false",
        "--optimizer=lamb",
        "--learning-rate=1e-3",
        f"--model={model}",
        f"--train-file={data}",
        "--max-seq-length=32",
        "--per-device-train-batch-size=2",  # x 8 devices = the global batch of 16
        f"--max-steps={PT_STEPS}",
        "--logging-steps=1",
        "--no-progress",
        f"--output-dir={out}",
    ]


def _prepare(tmp_path) -> tuple[str, str, dict]:
    """(model folder, prepared folder, its manifest) for the Grain phase: real text (question + sentence
    of the first PT_DOCS QNLI demo rows, a document each) with a vocabulary of only the word pieces it
    uses (the packaged tokenizer's pieces: the same tokens, a 1-layer model whose MLM head is small)."""
    import csv

    from mobilebert_jax.model.config import MobileBertConfig
    from mobilebert_jax.tasks import pretraining_data as PD
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    with open(os.path.join(DEMO, "train.tsv"), encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1 : PT_DOCS + 1]
    text, model = str(tmp_path / "corpus.txt"), str(tmp_path / "pt_model")
    with open(text, "w", encoding="utf-8") as f:
        f.writelines(f"{r[1]}\n{r[2]}\n\n" for r in rows)
    pieces = {t for r in rows for t in MobileBertTokenizer.default().tokenize(r[1], r[2])}
    os.makedirs(model)
    with open(os.path.join(model, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(pieces)]) + "\n")
    config = MobileBertConfig.from_preset("mobilebert-test", vocab_size=len(pieces) + 5, num_hidden_layers=1)
    save_random_pretraining_model(model, config)
    data = str(tmp_path / "prepared")
    manifest = PD.prepare_pretraining_data(
        [text], data, tokenizer=model, max_seq_length=32, num_workers=0, progress=False
    )
    return model, data, manifest


def _env(
    tmp_path, devices: int, ids_dir: str, sleep: float = 0.0, then: list | None = None
) -> dict[str, str]:
    os.makedirs(ids_dir, exist_ok=True)
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags += [f"--xla_force_host_platform_device_count={devices}", "--xla_backend_optimization_level=0"]
    return dict(
        os.environ,
        PYTHONPATH=ROOT,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=" ".join(flags),
        # the restart reads the executables of the first run from the cache
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        MBJ_TEST_IDS_DIR=ids_dir,
        MBJ_TEST_SLEEP=str(sleep),
        MBJ_TEST_THEN=json.dumps(then) if then else "",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cmd: list[str], env: dict, log_path: str) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _two_processes(
    tmp_path, out: str, extra: list[str], sleep: float, tag: str, then: list | None = None
) -> list[subprocess.Popen]:
    port = _free_port()
    env = _env(tmp_path, 4, os.path.join(out, "ids"), sleep, then)
    dist = ["--distributed", f"--coordinator-address=127.0.0.1:{port}", "--num-processes=2"]
    return [
        _launch(_job(out) + extra + dist + [f"--process-id={i}"], env, str(tmp_path / f"{tag}.{i}.log"))
        for i in range(2)
    ]


def _committed(out: str) -> list[int]:
    d = os.path.join(out, "checkpoints")
    return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def _wait(procs, t_end: float, logs: list) -> None:
    for p, log in zip(procs, logs):
        left = t_end - time.time()
        try:
            rc = p.wait(max(left, 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"timed out; log tail:\n{open(log).read()[-3000:]}")
        assert rc == 0, f"exit {rc}; log tail:\n{open(log).read()[-3000:]}"


def _checkpoint_params(out: str, step: int) -> dict[str, np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    from mobilebert_jax.training.optim import path_str

    path = os.path.join(out, "checkpoints", str(step), "state")
    ckpt = ocp.PyTreeCheckpointer()
    tree = ckpt.metadata(path).item_metadata.tree
    restored = ckpt.restore(
        path, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    )
    assert int(restored["step"]) == step
    return {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(restored["params"])}


def _final_params(out: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(os.path.join(out, "hf_model", "model.safetensors"))


def _tree_rel_err(a: dict, b: dict) -> float:
    """rel_err over all params as one vector (a per-leaf ratio is noise/noise for the attention key bias,
    whose true gradient is zero: softmax ignores a constant added to every score)."""
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())[:5]
    keys = sorted(a)
    return rel_err(np.concatenate([a[k].ravel() for k in keys]), np.concatenate([b[k].ravel() for k in keys]))


def _ids(out: str, process: int) -> list[dict]:
    with open(os.path.join(out, "ids", f"ids.{process}.jsonl")) as f:
        return [json.loads(x) for x in f]


def _rows(out: str, process: int) -> list[dict]:
    with open(os.path.join(out, "ids", f"rows.{process}.jsonl")) as f:
        return [json.loads(x) for x in f]


def test_two_processes_equal_one_through_sigkill_and_a_new_mesh(tmp_path, gcs_emulator):
    from mobilebert_jax import storage

    t_end = time.time() + DEADLINE
    ref, mp = str(tmp_path / "single"), str(tmp_path / "multi")
    pt_model, data = str(tmp_path / "pt_model"), str(tmp_path / "prepared")  # written by _prepare
    procs: list[subprocess.Popen] = []
    try:
        # the reference (1 process, 8 devices) and the first leg (2 processes, data=8) run side by side
        ref_log = str(tmp_path / "single.log")
        then = _pretrain_job(pt_model, data, os.path.join(ref, "pretrain"))
        procs.append(_launch(_job(ref), _env(tmp_path, 8, os.path.join(ref, "ids"), then=then), ref_log))
        leg1 = _two_processes(tmp_path, mp, [], sleep=1.5, tag="leg1")
        procs += leg1
        _, _, manifest = _prepare(tmp_path)  # read once the finetune is done
        while SAVE not in _committed(mp):
            for i, p in enumerate(leg1):
                log = open(tmp_path / f"leg1.{i}.log").read()
                assert p.poll() is None, f"process {i} ended before the kill:\n{log[-3000:]}"
            assert time.time() < t_end, "no checkpoint committed in time"
            time.sleep(0.05)
        for p in leg1:
            p.send_signal(signal.SIGKILL)
        for p in leg1:
            p.wait(30)
        killed = _committed(mp)
        assert killed == [SAVE] and not os.path.exists(os.path.join(mp, "hf_model")), killed
        gs_data, gs_out = "gs://test-bucket/multiprocess/prepared", "gs://test-bucket/multiprocess/pretrain"
        storage.upload_dir(data, gs_data)

        leg2 = _two_processes(
            tmp_path,
            mp,
            ["--mesh-data=4", "--mesh-fsdp=2", "--sharding-rules=fsdp"],
            sleep=0.0,
            tag="leg2",
            then=_pretrain_job(pt_model, gs_data, gs_out),
        )
        procs += leg2
        _wait(leg2, t_end, [str(tmp_path / f"leg2.{i}.log") for i in range(2)])
        _wait(procs[:1], t_end, [ref_log])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)

    leg2_log = open(tmp_path / "leg2.0.log").read()
    assert "mesh {'data': 4, 'fsdp': 2, 'tensor': 1}" in leg2_log, leg2_log[-2000:]
    report = json.load(open(os.path.join(mp, "eval_results.json")))
    assert report["steps"] == STEPS and report["stopped"] == "done"
    steps = [json.loads(x)["step"] for x in open(os.path.join(mp, "metrics.jsonl"))]
    assert steps[-(STEPS - SAVE) :] == list(range(SAVE + 1, STEPS + 1)), steps  # resumed after SAVE

    # params: before the kill (the checkpoint both processes wrote) and after the restart (the end)
    before = _tree_rel_err(_checkpoint_params(mp, SAVE), _checkpoint_params(ref, SAVE))
    after = _tree_rel_err(_final_params(mp), _final_params(ref))
    print(f"2 processes vs 1: params rel err {before:.2e} at step {SAVE} (killed), {after:.2e} at the end")
    assert before <= 1e-6 and after <= 1e-6, (before, after)

    # data: each process reads its own half of every batch; together they read the reference's batch
    reference = {(r["epoch"], r["index"]): r["ids"] for r in _ids(ref, 0)}
    assert len(reference) == STEPS
    per_epoch = N_TRAIN // BATCH
    for e in range(STEPS // per_epoch):  # complete: every example once per epoch
        assert sorted(sum((reference[(e, i)] for i in range(per_epoch)), [])) == list(range(N_TRAIN))
    legs = []  # per process: (killed leg, restarted leg), told apart by the writer's pid
    for i in range(2):
        runs: dict[int, list] = {}
        for r in _ids(mp, i):
            runs.setdefault(r["pid"], []).append(r)
        assert len(runs) == 2, f"process {i}: {len(runs)} runs logged"
        first, second = runs.values()
        where = lambda rs: [(r["epoch"], r["index"]) for r in rs]  # noqa: E731
        assert where(first)[:SAVE] == sorted(reference)[:SAVE] and SAVE <= len(first) <= STEPS
        assert where(second) == sorted(reference)[SAVE:], where(second)  # the checkpoint's data position
        for r in first + second:
            assert r["ids"] == reference[(r["epoch"], r["index"])][i * BATCH // 2 : (i + 1) * BATCH // 2], (
                i,
                r,
            )
        legs.append((first, second))
    for leg in range(2):
        for a, b in zip(legs[0][leg], legs[1][leg]):
            assert len(a["ids"]) == len(b["ids"]) == BATCH // 2 and not set(a["ids"]) & set(b["ids"])

    # the Grain phase (a prepared folder, 2 processes vs 1): rows, then params
    from multiprocess_job import row_hashes

    from mobilebert_jax.tasks import pretraining_data as PD

    n = manifest["num_instances"]
    assert n == 31 and PT_STEPS * BATCH > n  # batch 2 straddles the epochs
    keys = _rows(ref, 0)[0]["keys"]
    folder = PD.read_all(data)
    index = {h: j for j, h in enumerate(row_hashes({k: folder[k] for k in keys}))}
    assert len(index) == n  # every row of the folder has its own hash: a row read is identified
    ref_rows = [[index[h] for h in r["rows"]] for r in _rows(ref, 0)]
    assert [r["batch"] for r in _rows(ref, 0)] == list(range(PT_STEPS))
    stream = sum(ref_rows, [])
    assert sorted(stream[:n]) == list(range(n)) and len(stream) == PT_STEPS * BATCH  # an epoch: all rows
    hosts = []
    for i in range(2):
        logged = _rows(mp, i)
        assert [r["batch"] for r in logged] == list(range(PT_STEPS)) and logged[0]["keys"] == keys
        hosts.append([[index[h] for h in r["rows"]] for r in logged])
    for b in range(PT_STEPS):  # host p holds rows [8p, 8p + 8) of the reference's batch, in order
        h0, h1 = hosts[0][b], hosts[1][b]
        assert len(h0) == len(h1) == BATCH // 2 and h0 + h1 == ref_rows[b], (b, h0, h1, ref_rows[b])
        if b < n // BATCH:  # a batch inside the first epoch: no row twice
            assert not set(h0) & set(h1), (b, h0, h1)
    # every epoch (stream elements [e*n, (e+1)*n)): the hosts read disjoint rows, together the epoch's
    where = [
        [(b * BATCH + i * BATCH // 2 + j, row) for b in range(PT_STEPS) for j, row in enumerate(h[b])]
        for i, h in enumerate(hosts)
    ]
    for e in range(-(-PT_STEPS * BATCH // n)):
        e0, e1 = ([row for k, row in w if e * n <= k < (e + 1) * n] for w in where)
        assert not set(e0) & set(e1) and sorted(e0 + e1) == sorted(stream[e * n : (e + 1) * n]), (e, e0, e1)
        assert e > 0 or sorted(e0 + e1) == list(range(n))  # the first epoch: every row of the folder
    pt = _tree_rel_err(
        _final_params(storage.local_copy(gs_out)), _final_params(os.path.join(ref, "pretrain"))
    )
    print(f"Grain, 2 processes vs 1: {n} rows, params rel err {pt:.2e} after {PT_STEPS} steps")
    assert pt <= 1e-6, pt
