"""Pretraining data at corpus scale: text shards -> ArrayRecord shards of instances -> Grain batches.

`prepare_pretraining_data` (the `prepare-pretraining-data` command) reads text files (one sentence
per line, a blank line between documents), cuts them at document boundaries into shards of about
`shard_size_mb`, and builds each shard's instances in a worker process with `PretrainingTask.instances`
(the in-memory algorithm, unchanged: `dupe_factor` passes of different masks, random B sentences
drawn from the same shard, as BERT's `create_pretraining_data.py` run once per shard) from
`random.Random(seed + shard index)`. A corpus that fits in one shard gives exactly the instances of
`PretrainingTask(seed=seed).featurise` on the whole file. Memory is bounded by one shard per
worker; a finished shard is a complete file (written aside, then renamed), so rerunning the same
command after a crash builds only the missing shards.

Output folder: `dataset.json` (options, tokenizer vocabulary hash, inputs, the shard plan, counts)
and `pretraining-KKKKK-of-NNNNN.arrayrecord`, one record per instance (int32: length, number of
segment-A tokens incl. [CLS]/[SEP], NSP label, number of masked positions, ids, positions, original
ids). `training.grain_data.prepared_iterator` reads such a folder through `GrainIterator` and pads
each instance to the arrays of `instances_to_arrays`.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.tasks.base import DataError, vocab_tokens
from mobilebert_jax.tasks.pretraining import (
    PREPARED_MANIFEST,
    Instance,
    PretrainingTask,
    documents_from_lines,
    instances_to_arrays,
)

MANIFEST = PREPARED_MANIFEST
FORMAT = "mobilebert-jax-pretraining-instances/1"
_OPTION_FIELDS = (
    "seed",
    "dupe_factor",
    "short_seq_prob",
    "masked_lm_prob",
    "max_predictions_per_seq",
    "whole_word_mask",
)


# ---------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------
def encode_instance(x: Instance) -> bytes:
    """One record: int32 [length, n_type0, is_random_next, n_masked, ids..., positions..., masked ids...]."""
    t, n0 = len(x.input_ids), x.token_type_ids.count(0)
    if x.token_type_ids != [0] * n0 + [1] * (t - n0):
        raise ValueError("token_type_ids must be zeros then ones (segment A, then B)")
    head = [t, n0, int(x.is_random_next), len(x.masked_positions)]
    return np.asarray(head + x.input_ids + x.masked_positions + x.masked_ids, np.int32).tobytes()


def decode_instance(record: bytes) -> Instance:
    a = np.frombuffer(record, np.int32)
    t, n0, rnd, m = (int(v) for v in a[:4])
    ids = a[4 : 4 + t].tolist()
    return Instance(
        ids,
        [0] * n0 + [1] * (t - n0),
        bool(rnd),
        a[4 + t : 4 + t + m].tolist(),
        a[4 + t + m : 4 + t + 2 * m].tolist(),
    )


@dataclasses.dataclass(frozen=True)
class InstanceFeatures:
    """Grain transform: a record -> the arrays of one row of `instances_to_arrays` (selected `keys`)."""

    max_len: int
    max_predictions: int
    keys: tuple[str, ...] | None = None

    def __call__(self, record: bytes) -> dict[str, np.ndarray]:
        a = np.frombuffer(record, np.int32)
        t, n0, rnd, m = (int(v) for v in a[:4])
        if t > self.max_len or m > self.max_predictions:
            raise DataError(
                f"instance of {t} tokens / {m} masks exceeds {self.max_len} / {self.max_predictions}"
            )
        ids, pos, orig = a[4 : 4 + t], a[4 + t : 4 + t + m], a[4 + t + m : 4 + t + 2 * m]
        out = {
            "input_ids": np.zeros(self.max_len, np.int32),
            "token_type_ids": np.zeros(self.max_len, np.int32),
            "attention_mask": np.zeros(self.max_len, np.int32),
            "labels": np.full(self.max_len, -100, np.int32),
            "next_sentence_label": np.int32(rnd),
            "masked_lm_positions": np.zeros(self.max_predictions, np.int32),
            "masked_lm_ids": np.zeros(self.max_predictions, np.int32),
            "masked_lm_weights": np.zeros(self.max_predictions, np.float32),
        }
        out["input_ids"][:t] = ids
        out["token_type_ids"][n0:t] = 1
        out["attention_mask"][:t] = 1
        out["labels"][pos] = orig
        out["masked_lm_positions"][:m] = pos
        out["masked_lm_ids"][:m] = orig
        out["masked_lm_weights"][:m] = 1.0
        return out if self.keys is None else {k: out[k] for k in self.keys}


# ---------------------------------------------------------------------------------------------------
# Shards of text
# ---------------------------------------------------------------------------------------------------
def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Files from paths and globs, in the order given (each glob sorted); a pattern matching nothing is an error."""
    files: list[str] = []
    for spec in inputs:
        if os.path.isdir(spec):
            raise DataError("is a folder; pass its files or a glob such as DIR/*.txt", spec)
        found = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        if not found:
            raise DataError("no file matches", spec)
        for f in found:
            if not os.path.isfile(f):
                raise DataError("no such file", f)
            files.append(os.path.abspath(f))
    if not files:
        raise DataError("no input files", ", ".join(inputs))
    return files


def plan_shards(files: Sequence[str], shard_bytes: int) -> list[list[tuple[int, int, int]]]:
    """Byte ranges (file index, start, end) of each shard: about `shard_bytes` of text, cut after a blank line.

    A file's end also ends a document. One pass over the text, constant memory.
    """
    shards: list[list[tuple[int, int, int]]] = []
    cur: list[tuple[int, int, int]] = []
    cur_bytes = 0
    for fi, path in enumerate(files):
        start = pos = 0
        with open(path, "rb") as f:
            for line in f:
                pos += len(line)
                if cur_bytes + pos - start >= shard_bytes and pos - start > len(line) and not line.strip():
                    cur.append((fi, start, pos))
                    shards.append(cur)
                    cur, cur_bytes, start = [], 0, pos
        if pos > start:
            cur.append((fi, start, pos))
            cur_bytes += pos - start
    if cur:
        shards.append(cur)
    return shards


def read_range(path: str, start: int, end: int) -> list[list[str]]:
    """The documents in bytes [start, end) of a file (as `read_documents` splits the whole file)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        text = data.decode("utf-8-sig" if start == 0 else "utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 at byte {start + e.start}", path) from None
    return documents_from_lines(text.split("\n"))


# ---------------------------------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------------------------------
def load_tokenizer(spec: str | None) -> Any:
    from mobilebert_jax.text.tokenizer import MobileBertTokenizer

    return MobileBertTokenizer.default() if spec is None else MobileBertTokenizer.from_pretrained(spec)


def vocab_sha256(tok: Any) -> str:
    return hashlib.sha256("\n".join(vocab_tokens(tok)).encode("utf-8")).hexdigest()


def shard_name(k: int, n: int) -> str:
    return f"pretraining-{k:05d}-of-{n:05d}.arrayrecord"


_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer: str | None) -> None:
    _WORKER["tok"] = load_tokenizer(tokenizer)


def build_shard(job: dict, tok: Any | None = None) -> tuple[int, int]:
    """Writes one shard's instances (job: k, ranges, files, out, task fields, max_seq_length) -> (k, count)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    tok = tok if tok is not None else _WORKER["tok"]
    docs: list[list[str]] = []
    for fi, a, b in job["ranges"]:
        docs.extend(read_range(job["files"][fi], a, b))
    task = PretrainingTask(**{**job["task"], "seed": job["task"]["seed"] + job["k"]})
    try:
        insts = task.instances(docs, tok, job["max_seq_length"])
    except ValueError as e:
        if "no tokens" not in str(e):
            raise
        insts = []  # a shard of blank text: an empty shard
    tmp = f"{job['out']}.tmp-{os.getpid()}"
    w = ArrayRecordWriter(tmp, "group_size:1")  # one record per chunk: cheap random access (global shuffle)
    for x in insts:
        w.write(encode_instance(x))
    w.close()
    os.replace(tmp, job["out"])
    return job["k"], len(insts)


def _num_records(path: str) -> int:
    from array_record.python.array_record_module import ArrayRecordReader

    r = ArrayRecordReader(path)
    try:
        return int(r.num_records())
    finally:
        r.close()


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _differences(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(f"{prefix}{k}")
    return out


def _start_output(output_dir: str, manifest: dict) -> str:
    """Checks that `output_dir` holds nothing prepared with other inputs or options, removes the temp
    files of a killed run and writes the manifest marked incomplete; returns the manifest's path."""
    mpath = os.path.join(output_dir, MANIFEST)
    if os.path.exists(mpath):
        with open(mpath, encoding="utf-8") as f:
            old = json.load(f)
        diff = _differences({k: v for k, v in old.items() if k in manifest}, manifest)
        if diff:
            raise ValueError(
                f"{output_dir} holds data prepared with other inputs or options (differ: {', '.join(diff)}); "
                "use another --output-dir or delete it"
            )
    for name in os.listdir(output_dir):
        if ".arrayrecord.tmp-" in name:  # left by a killed run
            os.remove(os.path.join(output_dir, name))
    with open(mpath, "w", encoding="utf-8") as f:
        json.dump({**manifest, "complete": False}, f, indent=1)
    return mpath


def _build_shards(
    jobs: list[dict], n: int, tok: Any, tokenizer: str | None, num_workers: int | None, progress: bool
) -> tuple[int, float]:
    """Builds the shards of `jobs` (in worker processes unless `num_workers` is 0) with a progress bar
    over all `n` shards; returns (instances written, the `time.perf_counter()` the build started)."""
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, len(jobs))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=n - len(jobs), unit="shard", desc="prepare", dynamic_ncols=True)
    t0, made = time.perf_counter(), 0

    def done(count: int) -> None:
        nonlocal made
        made += count
        if bar is not None:
            bar.update(1)
            bar.set_postfix(instances=made, per_s=f"{made / max(time.perf_counter() - t0, 1e-9):.0f}")

    try:
        if num_workers <= 0 or not jobs:
            for job in jobs:
                done(build_shard(job, tok)[1])
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(num_workers, _init_worker, (tokenizer,)) as pool:
                for _, count in pool.imap_unordered(build_shard, jobs):
                    done(count)
    finally:
        if bar is not None:
            bar.close()
    return made, t0


def prepare_pretraining_data(
    inputs: Sequence[str],
    output_dir: str,
    *,
    tokenizer: str | None = None,
    max_seq_length: int = 128,
    shard_size_mb: float = 8.0,
    num_workers: int | None = None,
    progress: bool = True,
    **task_fields: Any,
) -> dict:
    """Builds (or finishes) the ArrayRecord shards of `inputs` in `output_dir`; returns the manifest.

    Args:
        inputs: text files or globs (one sentence per line, a blank line between documents).
        tokenizer: a tokenizer folder (vocab.txt or tokenizer.json); None: the packaged uncased vocab.
        task_fields: `PretrainingTask` fields (seed, dupe_factor, masked_lm_prob, short_seq_prob,
            max_predictions_per_seq, whole_word_mask); defaults as the `pretrain` job's.
        num_workers: processes (None: one per CPU, at most one per shard; 0: in this process).

    gs:// inputs are read from local copies; a gs:// `output_dir` is built locally and uploaded whole.
    """
    if storage.is_url(output_dir) or any(storage.is_url(i) for i in inputs):
        opts = dict(tokenizer=tokenizer, max_seq_length=max_seq_length, shard_size_mb=shard_size_mb)
        opts.update(num_workers=num_workers, progress=progress, **task_fields)
        local_inputs = [storage.local_copy(i) for i in inputs]
        if not storage.is_url(output_dir):
            return prepare_pretraining_data(local_inputs, output_dir, **opts)
        out: dict = {}
        storage.replace_dir(
            output_dir, lambda tmp: out.update(prepare_pretraining_data(local_inputs, tmp, **opts))
        )
        return out
    bad = sorted(set(task_fields) - set(_OPTION_FIELDS))
    if bad:
        raise ValueError(f"unknown option(s) {bad}; known: {list(_OPTION_FIELDS)}")
    task = PretrainingTask(**task_fields)
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length must be >= 5 for a pair with specials, got {max_seq_length}")
    if shard_size_mb <= 0:
        raise ValueError(f"shard_size_mb must be > 0, got {shard_size_mb}")
    files = expand_inputs(inputs)
    tok = load_tokenizer(tokenizer)
    plan = plan_shards(files, int(shard_size_mb * 2**20))
    n = len(plan)
    manifest = {
        "format": FORMAT,
        "max_seq_length": max_seq_length,
        "task": {k: getattr(task, k) for k in _OPTION_FIELDS},
        "tokenizer": {
            "spec": tokenizer,
            "vocab_size": len(vocab_tokens(tok)),
            "vocab_sha256": vocab_sha256(tok),
        },
        "inputs": [{"path": f, "bytes": os.path.getsize(f)} for f in files],
        "shard_size_mb": shard_size_mb,
        "shards": [{"file": shard_name(k, n), "ranges": [list(r) for r in rs]} for k, rs in enumerate(plan)],
    }
    os.makedirs(output_dir, exist_ok=True)
    mpath = _start_output(output_dir, manifest)
    jobs = []
    for k, rs in enumerate(plan):
        out = os.path.join(output_dir, shard_name(k, n))
        if not os.path.exists(out):
            jobs.append(
                {
                    "k": k,
                    "ranges": rs,
                    "files": files,
                    "out": out,
                    "task": manifest["task"],
                    "max_seq_length": max_seq_length,
                }
            )
    made, t0 = _build_shards(jobs, n, tok, tokenizer, num_workers, progress)
    counts = [_num_records(os.path.join(output_dir, s["file"])) for s in manifest["shards"]]
    manifest.update(complete=True, shard_instances=counts, num_instances=sum(counts))
    with open(mpath, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    manifest["built_shards"] = len(jobs)
    manifest["built_instances"] = made
    manifest["seconds"] = time.perf_counter() - t0
    return manifest


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------
def read_manifest(path: str) -> tuple[dict, list[str]]:
    """(manifest, shard paths) of a prepared folder; an unfinished one is an error. A gs:// folder is read
    from a local copy (ArrayRecord reads local files; each process copies it once)."""
    if storage.is_url(path):
        folder = storage.dirname(path) if storage.basename(path) == MANIFEST else path
        path = storage.local_copy(folder)
    folder = os.path.dirname(path) if os.path.basename(path) == MANIFEST else path
    mpath = os.path.join(folder, MANIFEST)
    if not os.path.isfile(mpath):
        raise DataError(f"no {MANIFEST} (not a prepare-pretraining-data folder)", folder)
    with open(mpath, encoding="utf-8") as f:
        m = json.load(f)
    if m.get("format") != FORMAT:
        raise DataError(f"format {m.get('format')!r}, expected {FORMAT!r}", mpath)
    if not m.get("complete"):
        raise DataError("preparation did not finish: rerun the same prepare-pretraining-data command", folder)
    paths = [os.path.join(folder, s["file"]) for s in m["shards"]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} shard file(s) missing, e.g. {os.path.basename(missing[0])}", folder)
    return m, [p for p, c in zip(paths, m["shard_instances"]) if c > 0]


def num_instances(path: str) -> int:
    return int(read_manifest(path)[0]["num_instances"])


def read_all(path: str) -> dict[str, np.ndarray]:
    """Every instance of a prepared folder, in file order, as `instances_to_arrays` (small data, tests)."""
    from array_record.python.array_record_module import ArrayRecordReader

    m, paths = read_manifest(path)
    insts = []
    for p in paths:
        r = ArrayRecordReader(p)
        insts += [decode_instance(b) for b in r.read_all()]
        r.close()
    return instances_to_arrays(insts, m["max_seq_length"], m["task"]["max_predictions_per_seq"])
