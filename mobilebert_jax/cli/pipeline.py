"""`mobilebert-jax pipeline TASK --model M --input FILE`: raw text through a pipeline, answers as JSONL.

    mobilebert-jax pipeline text-classification --model runs/sst2/hf_model --input reviews.txt
    mobilebert-jax pipeline question-answering --model runs/squad/hf_model --input qa.jsonl --output answers.jsonl
    mobilebert-jax pipeline fill-mask --model export/ --backend litert --input masked.txt --params '{"top_k": 3}'

Input: a text file, one input per line (blank lines skipped), or `.jsonl` with one object per line:
`{"text": ...}` (`"text_pair"` too for text-classification pairs) or `{"question": ..., "context": ...}`
for question-answering; an `"id"` is copied to the output. Output: one JSON object per input,
`{"line": N, ["id": ...,] "output": answer}`, to `--output` or stdout, written as the stream is processed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from mobilebert_jax import storage
from mobilebert_jax.cli.common import json_object
from mobilebert_jax.tasks.base import DataError, check_file, iter_lines

TASKS = (
    "fill-mask",
    "text-classification",
    "sentiment-analysis",
    "token-classification",
    "ner",
    "question-answering",
    "feature-extraction",
)


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("task", choices=TASKS, help="the pipeline (HF's task names)")
    p.add_argument(
        "--model", required=True, help="HF directory, preset or hub id; an export directory for litert/onnx"
    )
    p.add_argument("--input", required=True, help="text file (one input a line) or .jsonl")
    p.add_argument("--output", default="-", help="JSONL file to write (default: stdout)")
    p.add_argument(
        "--backend",
        choices=("jax", "litert", "onnx"),
        default=None,
        help="jax: an HF directory, preset or hub id; litert / onnx: an `export` folder's model.tflite / "
        "model.onnx (default: the export folder's format, from its export.json, else jax)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory (default: the model's, else the packaged vocab)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="inputs per model call (default 32)")
    p.add_argument(
        "--params",
        type=json_object,
        default={},
        metavar="JSON",
        help='call parameters of the task, e.g. \'{"top_k": 3}\', \'{"aggregation_strategy": "simple"}\'',
    )
    p.add_argument(
        "--model-config",
        type=json_object,
        default={},
        metavar="JSON",
        help="config overrides for a preset or directory (e.g. '{\"vocab_size\": 30522}')",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def read_inputs(path: str, task: str) -> Iterator[tuple[int, Any, Any]]:
    """(line, id or None, pipeline input) per input; a bad line raises DataError naming file and line."""
    check_file(path)
    qa = task == "question-answering"
    jsonl = os.fspath(path).lower().endswith((".jsonl", ".ndjson"))
    if qa and not jsonl:
        raise DataError('question-answering needs a .jsonl file of {"question": ..., "context": ...}', path)
    for line, text in iter_lines(path):
        if not text.strip():
            continue
        if not jsonl:
            yield line, None, text
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e}", path, line) from None
        if not isinstance(rec, dict):
            raise DataError(f"expected a JSON object, got {type(rec).__name__}", path, line)
        keys = ("question", "context") if qa else ("text",)
        for k in keys:
            if not isinstance(rec.get(k), str):
                raise DataError(f"missing or non-string {k!r} (have {sorted(rec)})", path, line)
        if qa:
            item: Any = {"question": rec["question"], "context": rec["context"]}
        elif "text_pair" in rec:
            if task not in ("text-classification", "sentiment-analysis", "feature-extraction"):
                raise DataError(f"'text_pair' is not an input of {task}", path, line)
            item = {"text": rec["text"], "text_pair": rec["text_pair"]}
        else:
            item = rec["text"]
        yield line, rec.get("id"), item


def _jsonable(x: Any) -> Any:
    import numpy as np

    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def run_pipeline(args: argparse.Namespace) -> int:
    from mobilebert_jax.pipelines import pipeline

    rows = list(
        read_inputs(args.input, args.task)
    )  # read (and check) the whole file before loading the model
    pipe = pipeline(
        args.task,
        args.model,
        args.tokenizer,
        backend=args.backend,
        batch_size=args.batch_size,
        progress=False if args.no_progress else None,
        config_overrides=args.model_config or None,
        **args.params,
    )
    out = sys.stdout if args.output == "-" else storage.open(args.output, "w", encoding="utf-8")
    try:
        answers = pipe.stream([item for _, _, item in rows])
        for (line, rid, _), answer in zip(rows, answers):
            rec: dict[str, Any] = {"line": line}
            if rid is not None:
                rec["id"] = rid
            rec["output"] = _jsonable(answer)
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if args.output != "-":
        print(f"wrote {len(rows)} answers to {args.output}", file=sys.stderr)
    return 0
