"""Pretraining data at corpus scale: prepare-pretraining-data (ArrayRecord shards) and the Grain loader.

The instances of the ArrayRecord route are those of the in-memory `PretrainingTask.featurise` (same
seed, same algorithm), per shard; the loader gives each host disjoint rows that together make the
global batch, and a run killed with SIGKILL resumes bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("grain", reason="grain is a dependency (pip install -e .)")

from mobilebert_jax.jobs.config import JobConfig  # noqa: E402
from mobilebert_jax.jobs.finetune import run_finetune  # noqa: E402
from mobilebert_jax.tasks import pretraining_data as PD  # noqa: E402
from mobilebert_jax.tasks.pretraining import PretrainingTask, documents_from_lines, read_documents  # noqa: E402
from mobilebert_jax.training.grain_data import GrainIterator, prepared_iterator  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WORDS = (
    "the a of to and in film river city music game war king queen team school water light year people "
    "time old new north south play ##ing ##ed run walk"
).split()


def _corpus(path, n_docs: int, seed: int = 0) -> str:
    r = random.Random(seed)
    whole = [w for w in WORDS if not w.startswith("##")]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_docs):
            for _ in range(r.randint(1, 7)):
                words = [
                    r.choice(whole) + ("ing" if r.random() < 0.1 else "") for _ in range(r.randint(2, 24))
                ]
                f.write(" ".join(words) + ".\n")
            f.write("\n" if r.random() < 0.8 else "  \r\n")  # blank lines, one with spaces and CR
    return str(path)


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    (d / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS) + "\n"
    )
    return str(d)


def test_one_shard_equals_in_memory_instances(tmp_path, vocab_dir):
    text = _corpus(tmp_path / "c.txt", 40)
    opts = dict(seed=7, dupe_factor=2, whole_word_mask=True, max_predictions_per_seq=6)
    m = PD.prepare_pretraining_data(
        [text],
        str(tmp_path / "out"),
        tokenizer=vocab_dir,
        max_seq_length=48,
        num_workers=0,
        progress=False,
        **opts,
    )
    assert len(m["shards"]) == 1 and m["complete"]
    tok = PD.load_tokenizer(vocab_dir)
    ref = PretrainingTask(**opts).featurise(read_documents(text), tok, 48)
    got = PD.read_all(str(tmp_path / "out"))
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert ref["next_sentence_label"].min() == 0 and ref["next_sentence_label"].max() == 1
    # the loader's decoding (in order) gives the same rows
    it = prepared_iterator(
        str(tmp_path / "out"),
        8,
        shuffle=False,
        max_seq_length=48,
        tokenizer=tok,
        process_index=0,
        process_count=1,
    )
    n = len(ref["input_ids"]) // 8
    rows = [next(it) for _ in range(n)]
    for k in ref:
        np.testing.assert_array_equal(np.concatenate([b[k] for b in rows]), ref[k][: 8 * n], err_msg=k)
    with pytest.raises(ValueError, match="max_seq_length 48; the job asks for 64"):
        prepared_iterator(str(tmp_path / "out"), 8, max_seq_length=64)
    with pytest.raises(ValueError, match=r"dupe_factor=2 \(the job asks for 1\)"):
        prepared_iterator(str(tmp_path / "out"), 8, task_options={"dupe_factor": 1})


def test_shards_workers_restart_and_errors(tmp_path, vocab_dir):
    texts = [_corpus(tmp_path / f"part{i}.txt", 30, seed=i) for i in range(2)]
    out = str(tmp_path / "out")
    kw = dict(tokenizer=vocab_dir, max_seq_length=32, shard_size_mb=0.004, progress=False, seed=3)
    m = PD.prepare_pretraining_data([str(tmp_path / "part*.txt")], out, num_workers=2, **kw)
    n = len(m["shards"])
    assert n >= 4 and m["num_instances"] == sum(m["shard_instances"]) > 0
    tok = PD.load_tokenizer(vocab_dir)
    # shard k = the in-memory algorithm on that shard's documents with seed + k; together all documents
    all_docs = []
    for k, s in enumerate(m["shards"]):
        docs = [d for fi, a, b in s["ranges"] for d in PD.read_range(texts[fi], a, b)]
        all_docs += docs
        ref = PretrainingTask(seed=3 + k).featurise(docs, tok, 32)
        got = PD.instances_to_arrays([PD.decode_instance(r) for r in _records(out, s["file"])], 32, 20)
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"shard {k} {key}")
    assert all_docs == [d for t in texts for d in read_documents(t)]
    # restart: only the missing shard is built, identical; finished ones are not touched
    victim = os.path.join(out, m["shards"][1]["file"])
    before = open(victim, "rb").read()
    os.remove(victim)
    open(victim + ".tmp-123", "wb").write(b"partial")  # left by a killed worker
    stamps = {
        s["file"]: os.stat(os.path.join(out, s["file"])).st_mtime_ns
        for s in m["shards"]
        if s != m["shards"][1]
    }
    m2 = PD.prepare_pretraining_data([str(tmp_path / "part*.txt")], out, num_workers=0, **kw)
    assert m2["built_shards"] == 1 and open(victim, "rb").read() == before
    assert not os.path.exists(victim + ".tmp-123")
    assert stamps == {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in stamps}
    with pytest.raises(ValueError, match="other inputs or options .*task.seed"):
        PD.prepare_pretraining_data([str(tmp_path / "part*.txt")], out, num_workers=0, **{**kw, "seed": 4})
    with pytest.raises(ValueError, match="no file matches"):
        PD.prepare_pretraining_data([str(tmp_path / "nothing*.txt")], str(tmp_path / "o2"), **kw)
    m3 = json.load(open(os.path.join(out, "dataset.json")))
    json.dump({**m3, "complete": False}, open(os.path.join(out, "dataset.json"), "w"))
    with pytest.raises(ValueError, match="preparation did not finish"):
        prepared_iterator(out, 8)


def _records(folder, name):
    from array_record.python.array_record_module import ArrayRecordReader

    r = ArrayRecordReader(os.path.join(folder, name))
    try:
        return r.read_all()
    finally:
        r.close()


def test_range_reader_matches_whole_file_reader(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("\ufeffa b\r\nc\n\n \u00a0\nd e\n\n\nf".encode())
    plan = PD.plan_shards([str(p)], 1)
    docs = [d for s in plan for fi, a, b in s for d in PD.read_range(str(p), a, b)]
    assert docs == read_documents(p) == documents_from_lines(["a b", "c", "", " \u00a0", "d e", "", "", "f"])
    assert len(plan) == 3
    p.write_bytes(b"ok\n\xff\n")
    with pytest.raises(ValueError, match="not UTF-8 at byte 3"):
        PD.read_range(str(p), 0, 6)


def _two_hosts(source, batch, steps, seed=5):
    out = []
    for p in range(2):
        it = GrainIterator(
            source, lambda x: {"x": np.int64(x)}, batch, seed=seed, process_index=p, process_count=2
        )
        out.append(([next(it)["x"] for _ in range(steps)], it.get_state()))
    return out


def test_hosts_read_disjoint_rows_that_make_the_global_batch():
    n, batch, steps = 37, 6, 14  # 84 rows: more than two epochs, batches straddle epochs
    one = GrainIterator(
        list(range(n)), lambda x: {"x": np.int64(x)}, batch, seed=5, process_index=0, process_count=1
    )
    single = [next(one)["x"] for _ in range(steps)]
    (h0, s0), (h1, s1) = _two_hosts(list(range(n)), batch, steps)
    assert s0 == s1 == {**one.get_state(), "process_count": 2}  # the same position on every host
    for b, x0, x1 in zip(single, h0, h1):
        assert len(x0) == len(x1) == batch // 2 and not set(x0) & set(x1)
        # the same global batch whatever the number of hosts, row for row (host p: rows p*B/P..)
        np.testing.assert_array_equal(np.concatenate([x0, x1]), b)
    stream = np.concatenate(single)
    for e in range(2):  # every epoch is a permutation of all rows, each a different one
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n))
    assert not np.array_equal(stream[:n], stream[n : 2 * n])
    # resume from a state: exactly the batches that followed
    again = GrainIterator(
        list(range(n)), lambda x: {"x": np.int64(x)}, batch, seed=5, process_index=0, process_count=1
    )
    again.set_state(json.loads(json.dumps({**one.get_state(), "batches": 5})))
    for b in single[5:]:
        np.testing.assert_array_equal(next(again)["x"], b)
    with pytest.raises(ValueError, match="process_count=2 does not match"):
        again.set_state(s0)
    with pytest.raises(ValueError, match="not divisible by 4 processes"):
        GrainIterator(list(range(n)), lambda x: {"x": x}, 6, process_index=0, process_count=4)


def test_finetune_pretraining_reads_a_prepared_folder(tmp_path, vocab_dir):
    """`pretrain --train-file FOLDER` takes the Grain route: its checks run before anything compiles."""
    text = _corpus(tmp_path / "c.txt", 10)
    PD.prepare_pretraining_data(
        [text], str(tmp_path / "out"), max_seq_length=32, num_workers=0, progress=False
    )
    job = JobConfig(
        task="pretraining",
        model="mobilebert-test",
        model_config={"vocab_size": 30522},
        train_file=str(tmp_path / "out"),
        validation_file=text,
        max_seq_length=64,
        output_dir=str(tmp_path / "run"),
        progress=False,
        mesh_data=1,
    )
    with pytest.raises(ValueError, match="max_seq_length 32; the job asks for 64"):
        run_finetune(job)
    job.max_seq_length, job.max_train_samples = 32, 5
    with pytest.raises(ValueError, match="--max_train_samples does not apply"):
        run_finetune(job)


def _committed(ckpt_dir: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if os.path.isdir(ckpt_dir) else []


def test_sigkill_mid_epoch_then_restart_resumes_bit_for_bit(tmp_path, vocab_dir):
    """Killed (SIGKILL) after its step-10 checkpoint, mid-epoch, reading with 2 Grain worker processes;
    rerun: the final params equal those of an uninterrupted run read in-process (0 workers)."""
    import grain_resume_job as J

    data = str(tmp_path / "data")
    m = PD.prepare_pretraining_data(
        [_corpus(tmp_path / "c.txt", 25)],
        data,
        tokenizer=vocab_dir,
        max_seq_length=J.MAX_LEN,
        num_workers=0,
        progress=False,
    )
    assert 10 * J.BATCH % m["num_instances"] != 0  # step 10 is inside an epoch
    assert J.NUM_STEPS * J.BATCH > 2 * m["num_instances"]  # the run crosses epochs
    wd = str(tmp_path / "killed")
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    cmd = [
        sys.executable,
        os.path.join(HERE, "grain_resume_job.py"),
        "--data",
        data,
        "--workdir",
        wd,
        "--workers",
        "2",
        "--sleep",
        "0.3",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        res = J.run(J.build(data, str(tmp_path / "reference")))  # meanwhile, the uninterrupted reference
        assert res.stopped == "done" and res.step == J.NUM_STEPS
        reference = J.flat_params(res.state.params)
        deadline = time.time() + 400
        while not any(s >= 10 for s in _committed(os.path.join(wd, "checkpoints"))):
            assert proc.poll() is None, f"job ended before it could be killed:\n{proc.stdout.read()}"
            assert time.time() < deadline, "no checkpoint at step >= 10 in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _committed(os.path.join(wd, "checkpoints"))[-1]
    assert 10 <= killed_at < J.NUM_STEPS, killed_at
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)  # the same command
    assert out.returncode == 0 and f"FINISHED {J.NUM_STEPS} done" in out.stdout, (
        out.stdout + out.stderr[-3000:]
    )
    final = dict(np.load(os.path.join(wd, "final_params.npz")))
    assert final.keys() == reference.keys()
    diff = [k for k in final if not np.array_equal(final[k], reference[k])]
    assert not diff, f"{len(diff)} params differ, e.g. {diff[:3]}"


@pytest.fixture
def compile_cache(tmp_path):
    """A persistent XLA cache for one test: a resumed run in the same process reuses the first's executables."""
    import jax

    keys = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (str(tmp_path / "xla_cache"), 0, 0)):
        jax.config.update(k, v)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


def test_distill_reads_a_prepared_folder(tmp_path, capsys):
    """`distill --train-file FOLDER` takes the Grain route and checks the folder against its preset first
    (the distillation itself from a prepared folder: test_distill.py, and the slow test below)."""
    from mobilebert_jax.cli.main import main

    text = _corpus(tmp_path / "c.txt", 10)
    PD.prepare_pretraining_data(
        [text], str(tmp_path / "out"), max_seq_length=32, num_workers=0, progress=False
    )
    argv = [
        "distill",
        "--config",
        "tiny",
        "--train-file",
        str(tmp_path / "out"),
        "--output-dir",
        str(tmp_path / "d"),
    ]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "error: " in captured.err and "max_seq_length 32; the job asks for 48" in captured.err
    assert "training instances" not in captured.out  # refused before anything ran


@pytest.mark.slow  # about 2 minutes on a loaded 2-core CPU (the distillation step's compile)
def test_distill_command_distils_from_a_prepared_folder_and_resumes(tmp_path, compile_cache):
    """The command end to end on a prepared folder (the tiny preset's models cut to 1 layer, a random
    teacher): it finishes with finite losses; a run resumed from its step-2 checkpoint ends with the
    uninterrupted run's params, bit for bit."""
    import shutil

    from conftest import save_random_pretraining_model
    from safetensors.numpy import load_file

    from mobilebert_jax.cli.main import main
    from mobilebert_jax.distill import run as R

    # the tiny preset's 48 tokens and 8 masked positions, the packaged vocabulary (the preset's)
    m = PD.prepare_pretraining_data(
        [_corpus(tmp_path / "c.txt", 12)],
        str(tmp_path / "p48"),
        max_seq_length=48,
        max_predictions_per_seq=8,
        num_workers=0,
        progress=False,
    )
    student, teacher, _ = R.preset_configs("tiny")
    student.replace(num_hidden_layers=1).save(str(tmp_path / "student.json"))
    save_random_pretraining_model(str(tmp_path / "teacher"), teacher.replace(num_hidden_layers=1))
    run = str(tmp_path / "d")
    argv = [
        "distill",
        "--config",
        "tiny",
        "--train-file",
        str(tmp_path / "p48"),
        "--output-dir",
        run,
        "--teacher",
        str(tmp_path / "teacher"),
        "--student-config",
        str(tmp_path / "student.json"),
        "--steps-per-stage",
        "0",
        "--distill-steps",
        "4",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "2",
        "--log-every",
        "1",
        "--no-progress",
    ]
    assert 4 * 8 > m["num_instances"] > 8  # the distillation crosses an epoch
    assert main(argv) == 0
    res = json.load(open(os.path.join(run, "distill_results.json")))
    assert res["stopped"] == "done" and res["step"] == 4, res
    hist = [json.loads(x) for x in open(os.path.join(run, "distill", "metrics.jsonl"))]
    assert [h["step"] for h in hist] == [1, 2, 3, 4] and all(np.isfinite(h["loss"]) for h in hist), hist
    final = load_file(os.path.join(run, "final_model", "model.safetensors"))
    # resume: the same command in a copy whose run stopped after its step-2 checkpoint
    again = str(tmp_path / "again")
    shutil.copytree(run, again, ignore=shutil.ignore_patterns("final_model", "distill_results.json"))
    shutil.rmtree(os.path.join(again, "distill", "checkpoints", "4"))
    assert main([again if a == run else a for a in argv]) == 0
    resumed = load_file(os.path.join(again, "final_model", "model.safetensors"))
    assert resumed.keys() == final.keys()
    diff = [k for k in final if not np.array_equal(final[k], resumed[k])]
    assert not diff, f"{len(diff)} params differ after the resume, e.g. {diff[:3]}"


def test_prepare_command_line(tmp_path, capsys):
    from mobilebert_jax.cli.main import main

    text = _corpus(tmp_path / "c.txt", 10)
    out = str(tmp_path / "out")
    argv = [
        "prepare-pretraining-data",
        text,
        "--output-dir",
        out,
        "--max-seq-length",
        "32",
        "--dupe-factor",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert main(argv) == 0
    m = json.load(open(os.path.join(out, "dataset.json")))
    assert m["complete"] and m["task"]["dupe_factor"] == 2 and m["max_seq_length"] == 32
    assert f'"num_instances": {m["num_instances"]}' in capsys.readouterr().out
    assert main(argv) == 0 and '"built_shards": 0' in capsys.readouterr().out  # finished: nothing to do
    assert main(["prepare-pretraining-data", str(tmp_path / "none*.txt"), "--output-dir", out]) == 1
    assert "error: " in capsys.readouterr().err
