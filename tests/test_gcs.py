"""gs:// everywhere a TPU job reaches (issue 32), against a real Cloud Storage emulator (fake-gcs-server,
started by conftest's `gcs_emulator` on a free loopback port).

Through the real command line on a 1-layer model and 8-row SST-2 files (the runs of test_reliability):
a fine-tune whose train file, validation file and output dir are gs:// URLs writes its run to the bucket
and computes what the same run into a local dir computes (byte-identical weights); the same run stopped
by SIGTERM after a checkpoint and rerun ends with the same weights; `export gs://... gs://... --format
onnx` works and the export loads with `load_runtime` from the bucket; `from_pretrained` and `pipeline`
read the gs:// hf_model; without credentials a gs:// path fails at once with one line. The distillation
recipe's smoke run with its inputs and output dir on the bucket, stopped and rerun, ends byte-identical to
the same run into a local dir, and refuses other settings and a locked dir as the local run does;
`convert` to and from the bucket writes the local conversion's bytes; the deploy check writes to a bucket
run. Nothing local is ever named `gs:`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from test_jobs import _sst2, _train_args, compile_cache  # noqa: F401
from test_reliability import RUN

from mobilebert_jax import storage
from mobilebert_jax.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "gs://test-bucket"
WEIGHTS = "hf_model/model.safetensors"


def _bytes(path: str) -> bytes:
    with storage.open(path, "rb") as f:
        return f.read()


def _sha(path: str) -> str:
    return hashlib.sha256(_bytes(path)).hexdigest()


def _no_local_gs(*dirs) -> None:
    for d in (*dirs, ROOT):
        for root, names, _ in os.walk(d):
            assert "gs:" not in names, f"a local folder named gs: in {root}"
            names[:] = [n for n in names if not n.startswith(".") and n not in ("node_modules", ".venv")]


def _env(gcs: dict, cache: str) -> dict[str, str]:
    return dict(
        os.environ,
        **gcs,
        PYTHONPATH=ROOT,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


def _cli(args: list[str], env: dict, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mobilebert_jax.cli.main", *args],
        env=env,
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kw,
    )


@pytest.fixture(scope="module")
def bucket_run(tmp_path_factory, gcs_emulator, compile_cache):  # noqa: F811
    """The 4-step run with gs:// train/validation files and output dir (a subprocess in an empty cwd),
    and the same command into a local dir (in this process)."""
    d = tmp_path_factory.mktemp("gcs")
    train = _sst2(d / "sst2.tsv")
    storage.write_text(f"{BUCKET}/data/sst2.tsv", open(train, encoding="utf-8").read())
    gs_train, out = f"{BUCKET}/data/sst2.tsv", f"{BUCKET}/runs/full"
    cwd = d / "cwd"
    cwd.mkdir()
    proc = _cli(_train_args(gs_train, out, *RUN, "4"), _env(gcs_emulator, compile_cache), cwd)
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, text[-3000:]
    assert main(_train_args(train, d / "local", *RUN, "4")) == 0
    return d, gs_train, out, cwd, text


def test_a_finetune_with_gs_files_and_output_dir_writes_its_run_to_the_bucket(bucket_run):
    d, gs_train, out, cwd, text = bucket_run
    names = storage.listdir(out)
    for name in ("run.json", "checkpoints", "hf_model", "eval_results.json", "metrics.jsonl"):
        assert name in names, names
    assert ".lock" not in names and storage.WRITING not in storage.listdir(f"{out}/hf_model")
    assert [n for n in storage.listdir(f"{out}/checkpoints") if n.isdigit()] == ["2", "4"]
    assert "integrity.json" in storage.listdir(f"{out}/checkpoints/4")  # sealed on the bucket
    run = json.loads(storage.read_text(f"{out}/run.json"))
    assert run["train_file"]["path"] == gs_train and run["train_file"]["bytes"] > 0
    report = json.loads(storage.read_text(f"{out}/eval_results.json"))
    assert report["stopped"] == "done" and report["steps"] == 4 and "eval" in report
    assert [json.loads(x)["step"] for x in storage.read_text(f"{out}/metrics.jsonl").splitlines()][:4] == [
        1,
        2,
        3,
        4,
    ]
    # the same computation as the local run, byte for byte
    assert _bytes(f"{out}/{WEIGHTS}") == (d / "local" / WEIGHTS).read_bytes()
    _no_local_gs(cwd, d)


def test_sigterm_after_a_checkpoint_on_the_bucket_then_rerun_ends_byte_identical(
    bucket_run,
    gcs_emulator,
    compile_cache,  # noqa: F811
    tmp_path,
):
    d, gs_train, full, cwd, _ = bucket_run
    # a long validation file evaluated at every step keeps the run busy for seconds after step 2's checkpoint
    rows = open(d / "sst2.tsv", encoding="utf-8").read().splitlines()
    big = f"{BUCKET}/data/dev-big.tsv"
    storage.write_text(big, "\n".join([rows[0], *rows[1:] * 400]) + "\n")
    out = f"{BUCKET}/runs/interrupted"
    args = [*_train_args(gs_train, out, *RUN, "4"), "--validation_file", big, "--eval_steps", "1"]
    env = _env(gcs_emulator, compile_cache)
    proc = _cli(args, env, tmp_path)
    try:
        t_end = time.time() + 300
        while not storage.exists(f"{out}/checkpoints/2/commit_success.txt"):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < t_end, "no checkpoint on the bucket in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        text = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 143, text[-3000:]
    report = json.loads(storage.read_text(f"{out}/eval_results.json"))
    assert report["stopped"] == "preempted" and 2 <= report["steps"] < 4, report
    assert "hf_model" not in storage.listdir(out) and ".lock" not in storage.listdir(out)
    rerun = _cli(args, env, tmp_path)
    text = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, text[-3000:]
    assert f"resuming from step {report['steps']} of 4" in text, text[-3000:]
    assert storage.exists(f"{out}/{WEIGHTS}"), text[-3000:]
    assert _sha(f"{out}/{WEIGHTS}") == _sha(f"{full}/{WEIGHTS}")
    _no_local_gs(tmp_path)


def test_a_second_job_on_a_bucket_dir_is_refused_by_the_lock_object(gcs_emulator, tmp_path, capsys):
    from mobilebert_jax.jobs import run_dir

    out = f"{BUCKET}/runs/locked"
    with run_dir.locked(out):
        holder = json.loads(storage.read_text(f"{out}/.lock"))
        assert holder["pid"] == os.getpid()
        with pytest.raises(run_dir.UsageError, match=f"{out} is in use by another job \\(pid {os.getpid()}"):
            with run_dir.locked(out):
                pass
    assert not storage.exists(f"{out}/.lock")


def test_replace_dir_on_a_bucket_keeps_the_old_folder_when_the_write_fails_and_refuses_a_half_one(
    gcs_emulator,
):
    url = f"{BUCKET}/replace/model"

    def write(files):
        def w(folder):
            os.makedirs(folder)
            for name, text in files.items():
                open(os.path.join(folder, name), "w").write(text)

        return w

    storage.replace_dir(url, write({"a.txt": "old", "b.txt": "old"}))

    def fails(folder):
        write({"a.txt": "new"})(folder)
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        storage.replace_dir(url, fails)
    assert storage.read_text(f"{url}/a.txt") == "old" and storage.listdir(url) == ["a.txt", "b.txt"]
    storage.replace_dir(url, write({"a.txt": "new"}))
    assert storage.listdir(url) == ["a.txt"] and storage.read_text(f"{url}/a.txt") == "new"
    storage.write_text(f"{url}/{storage.WRITING}", "{}")  # a writer that died mid-upload
    with pytest.raises(storage.StorageError, match="being written, or its writer stopped mid-upload"):
        storage.local_copy(url)
    assert storage.create_new(f"{url}/x", "1") and not storage.create_new(f"{url}/x", "2")
    assert storage.read_text(f"{url}/x") == "1"


def test_export_from_and_to_the_bucket_loads_with_load_runtime_and_pipelines_read_gs(
    bucket_run,
    gcs_emulator,
    compile_cache,  # noqa: F811
    tmp_path,
):
    for mod in ("jax2onnx", "onnxruntime"):
        pytest.importorskip(mod, reason=f"{mod} (the export extra) is not installed")
    from mobilebert_jax import from_pretrained
    from mobilebert_jax.export.runtime import load_runtime
    from mobilebert_jax.pipelines import pipeline

    d, _, out, _, _ = bucket_run
    model_url, export_url = f"{out}/hf_model", f"{BUCKET}/exports/onnx"
    proc = _cli(
        ["export", model_url, export_url, "--format", "onnx", "--seq-lengths", "32"],
        _env(gcs_emulator, compile_cache),
        tmp_path,
    )
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, text[-3000:]
    assert {"export.json", "config.json"} <= set(storage.listdir(export_url))
    rt = load_runtime(export_url)
    model, params = from_pretrained(model_url)
    local_model, local_params = from_pretrained(str(d / "local" / "hf_model"))
    tok = pipeline("text-classification", model_url).tokenizer
    enc = tok(["a gripping film", "dull"], padding="max_length", max_length=32, return_tensors="np")
    feed = {k: np.asarray(enc[k], np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    ref = np.asarray(model.apply({"params": params}, **feed).logits)
    got = rt(**feed)["logits"]
    assert np.max(np.abs(np.asarray(got) - ref)) <= 1e-5 * max(1.0, np.max(np.abs(ref)))
    ref_local = np.asarray(local_model.apply({"params": local_params}, **feed).logits)
    assert np.array_equal(ref, ref_local)
    texts = ["a gripping film", "dull and long"]
    on_gs = pipeline("text-classification", model_url)(texts)
    assert on_gs == pipeline("text-classification", str(d / "local" / "hf_model"))(texts)
    onnx = pipeline("text-classification", export_url)(texts)  # the backend from the bucket's export.json
    assert [r["label"] for r in onnx] == [r["label"] for r in on_gs]
    np.testing.assert_allclose([r["score"] for r in onnx], [r["score"] for r in on_gs], rtol=1e-5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_gs_path_without_credentials_fails_at_once_with_one_line(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STORAGE_EMULATOR", "TENSORSTORE_GCS", "GOOGLE_"))
    }
    # no gcloud credentials, and a metadata server that is not there (CI may run on a GCP VM)
    env.update(CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), GCE_METADATA_HOST=f"127.0.0.1:{_closed_port()}")
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    t = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mobilebert_jax.cli.main",
            *_train_args("gs://some-bucket/data/dev.tsv", "gs://some-bucket/runs/x", "--task_name", "sst2"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.time() - t
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert "gs://some-bucket/data/dev.tsv: no Google Cloud credentials" in proc.stderr
    assert "gcloud auth application-default login" in proc.stderr and "STORAGE_EMULATOR_HOST" in proc.stderr
    assert took < 30, f"{took:.1f} s (gcsfs alone retries for about 50 s)"
    _no_local_gs(tmp_path)


# --------------------------------------------------------------------------------------- distillation
DISTILL_RECIPE = os.path.join(ROOT, "train", "configs", "distillation.json")
DISTILL_FILES = ("--config", "--student-config", "--teacher-config", "--train-file", "--validation-file")


def _swap(argv: list[str], flags: dict[str, str]) -> list[str]:
    """`argv` with the values of `flags` replaced."""
    argv = list(argv)
    for flag, value in flags.items():
        argv[argv.index(flag) + 1] = value
    return argv


def _final_weights(path: str) -> str:
    return storage.join(path, "final_model", "model.safetensors")


@pytest.fixture(scope="module")
def distill_runs(tmp_path_factory, gcs_emulator, compile_cache):  # noqa: F811
    """The recipe's smoke distillation (2-layer pair, a 3-step pre-trained teacher, 2 + 2 transfer steps,
    3 distillation steps, held-out MLM/NSP) into a local dir (in this process), and the same command with
    the recipe, both model configs, the training and validation text and the output dir on the bucket:
    stopped at global step 3 (inside transfer_01), then rerun (subprocesses in an empty cwd)."""
    sys.path.insert(0, os.path.join(ROOT, "train"))
    import smoke

    d = tmp_path_factory.mktemp("distill")
    local_argv = smoke.smoke_argv(DISTILL_RECIPE, str(d / "local"), None)
    gs = {"--output-dir": f"{BUCKET}/distill/run"}
    for flag in DISTILL_FILES:
        path = local_argv[local_argv.index(flag) + 1]
        gs[flag] = f"{BUCKET}/distill/inputs/{os.path.basename(path)}"
        storage.write_text(gs[flag], open(path, encoding="utf-8").read())
    gs_argv = _swap(local_argv, gs)
    assert main(local_argv) == 0
    cwd = d / "cwd"
    cwd.mkdir()
    env = _env(gcs_emulator, compile_cache)
    texts = []
    for argv in ([*gs_argv, "--stop-at-step", "3"], gs_argv):
        proc = _cli(argv, env, cwd)
        texts.append(proc.communicate(timeout=300)[0])
        assert proc.returncode == 0, texts[-1][-3000:]
        if len(texts) == 1:
            stopped = json.loads(storage.read_text(f"{gs['--output-dir']}/distill_results.json"))
    return d / "local", gs["--output-dir"], local_argv, gs_argv, cwd, texts, stopped


def test_a_distillation_into_a_bucket_resumes_and_equals_the_local_run(distill_runs):
    local, out, _, _, cwd, (first, rerun), stopped = distill_runs
    assert stopped["stopped"] == "stopped" and stopped["step"] == 3, stopped
    assert "transfer_00: finished earlier (2 steps)" in rerun and "resuming from step 1 of 2" in rerun, rerun
    names = storage.listdir(out)
    for name in ("distill_run.json", "teacher", "transfer_00", "transfer_01", "distill", "final_model"):
        assert name in names, names
    assert ".lock" not in names and storage.WRITING not in storage.listdir(f"{out}/final_model")
    assert [n for n in storage.listdir(f"{out}/distill/checkpoints") if n.isdigit()] == ["2", "3"]
    assert "integrity.json" in storage.listdir(f"{out}/distill/checkpoints/3")
    assert "metrics.jsonl" in storage.listdir(f"{out}/distill")
    record, local_record = (
        json.loads(storage.read_text(f"{out}/distill_run.json")),
        json.loads((local / "distill_run.json").read_text()),
    )
    assert record["data"].pop("path").startswith(f"{BUCKET}/distill/inputs/")  # the same text, elsewhere
    assert local_record["data"].pop("path").startswith(str(local))
    assert record == local_record
    # the teacher pre-trained on the bucket's text, the student resumed mid-stage: the local run's bytes
    teacher = "teacher/hf_model/model.safetensors"
    assert _bytes(f"{out}/{teacher}") == (local / teacher).read_bytes()
    assert _bytes(_final_weights(out)) == (local / "final_model" / "model.safetensors").read_bytes()
    report = json.loads(storage.read_text(f"{out}/distill_results.json"))
    want = json.loads((local / "distill_results.json").read_text())
    assert report["stopped"] == "done" and report["step"] == want["step"] == 7
    for who in ("eval_student", "eval_teacher"):
        for k, v in want[who].items():
            np.testing.assert_allclose(report[who][k], v, rtol=1e-6, err_msg=f"{who}.{k}")
    from mobilebert_jax import from_pretrained
    from mobilebert_jax.jobs.distill import load_teacher

    _, params = from_pretrained(f"{out}/final_model")
    _, local_params = from_pretrained(str(local / "final_model"))
    for a, b in zip(jax_leaves(params), jax_leaves(local_params)):
        np.testing.assert_array_equal(a, b)
    # what `--teacher gs://.../teacher` reads (a run folder: its hf_model/)
    tc, tp = load_teacher(f"{out}/teacher")
    local_tc, local_tp = load_teacher(str(local / "teacher"))
    assert tc == local_tc
    for a, b in zip(jax_leaves(tp), jax_leaves(local_tp)):
        np.testing.assert_array_equal(a, b)
    _no_local_gs(cwd, local)


def jax_leaves(tree) -> list:
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_a_distillation_rerun_with_other_settings_or_on_a_locked_bucket_dir_is_refused(distill_runs, capsys):
    from mobilebert_jax.jobs import run_dir

    local, out, local_argv, gs_argv, _, _, _ = distill_runs
    before = {f: _sha(storage.join(out, f)) for f in storage.files_under(out)}
    other = {"--distill-steps": "4"}
    capsys.readouterr()
    assert main(_swap(local_argv, other)) == 1
    local_err = capsys.readouterr().err
    assert main(_swap(gs_argv, other)) == 1  # refused before the teacher or a stage writes anything
    gs_err = capsys.readouterr().err
    assert f"{out} holds a run with other settings (distill, stages differ)" in gs_err, gs_err
    assert gs_err.replace(out, "DIR") == local_err.replace(str(local), "DIR")
    # the same command on other training text (distill_run.json records its size and sha256)
    corpus = local_argv[local_argv.index("--train-file") + 1]
    changed = local.parent / "other_corpus.txt"
    changed.write_text(open(corpus, encoding="utf-8").read() + "one more sentence for the corpus .\n")
    assert main(_swap(local_argv, {"--train-file": str(changed)})) == 1
    assert f"{local} holds a run with other settings (data differ)" in capsys.readouterr().err
    with run_dir.locked(out):
        assert main(gs_argv) == 2
    assert f"{out} is in use by another job (pid {os.getpid()}" in capsys.readouterr().err
    assert {f: _sha(storage.join(out, f)) for f in storage.files_under(out)} == before


# --------------------------------------------------------------------------------------- convert, deploy
def test_convert_to_the_bucket_then_from_pretrained_equals_the_local_conversion(
    bucket_run,
    gcs_emulator,
    compile_cache,  # noqa: F811
    tmp_path,
    capsys,
):
    from mobilebert_jax import from_pretrained

    d, _, out, _, _ = bucket_run
    src_local, dst_local, dst = str(d / "local" / "hf_model"), tmp_path / "hf", f"{BUCKET}/converted/hf"
    assert main(["convert", src_local, str(dst_local)]) == 0
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = _cli(["convert", f"{out}/hf_model", dst], _env(gcs_emulator, compile_cache), cwd)
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, text[-3000:]
    files = sorted(os.listdir(dst_local))
    assert storage.listdir(dst) == files and {"model.safetensors", "vocab.txt", "tokenizer.json"} <= set(
        files
    )
    for f in files:
        assert _bytes(f"{dst}/{f}") == (dst_local / f).read_bytes(), f
    model, params = from_pretrained(dst)
    local_model, local_params = from_pretrained(str(dst_local))
    assert type(model) is type(local_model) and model.config == local_model.config
    for a, b in zip(jax_leaves(params), jax_leaves(local_params)):
        np.testing.assert_array_equal(a, b)
    orbax = f"{BUCKET}/converted/orbax"
    assert main(["convert", dst, orbax, "--to", "orbax"]) == 0
    assert {"config.json", "params"} <= set(storage.listdir(orbax))
    for a, b in zip(jax_leaves(from_pretrained(orbax)[1]), jax_leaves(local_params)):
        np.testing.assert_array_equal(a, b)
    capsys.readouterr()
    assert main(["convert", src_local, dst]) == 2
    assert f"{dst} exists and is not empty; pass --overwrite" in capsys.readouterr().err
    _no_local_gs(cwd, tmp_path)


def test_deploy_check_on_a_bucket_run_writes_its_exports_and_results_there(bucket_run, tmp_path):
    for mod in ("litert_converter", "ai_edge_litert"):
        pytest.importorskip(mod, reason=f"{mod} (the export extra) is not installed")
    from mobilebert_jax.jobs.export import deploy_check

    _, gs_train, out, _, _ = bucket_run
    results = deploy_check(out, gs_train, 32, limit=4)
    assert json.loads(storage.read_text(f"{out}/deploy_results.json")) == json.loads(json.dumps(results))
    for name in ("litert-fp32", "litert-dynamic-int8"):
        assert "export.json" in storage.listdir(f"{out}/{name}")
    fp32 = results["litert-fp32"]
    assert results["pairs"] == 4 and fp32["agreement_with_jax"] == 1.0 and fp32["rel_logit_error"] <= 1e-5
    _no_local_gs(tmp_path)
