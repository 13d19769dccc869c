"""Runs a recipe of `train/configs/` in its smoke form: same task, head, optimizer and schedule, small everything else.

    python train/smoke.py train/configs/squad_v1.json --output-dir /tmp/smoke_squad
    python train/smoke.py train/configs/distillation.json --data-dir ../shared/data --output-dir /tmp/smoke_kd

The recipe file is passed to its command unchanged (`finetune`/`pretrain --config-file`, `distill --config`);
flags given after it shrink the run, as a user's flags override a recipe:

- model: the `mobilebert-test` preset with the real 30,522-token vocabulary (same head class as the recipe's
  task); for distillation a 2-layer student and teacher of the recipe's model types (so 2 transfer stages, then
  pre-training distillation);
- data: the real files of `--data-dir` (SQuAD v1.1 dev, GLUE dev sets, CoNLL-2003 dev, SQuAD contexts as
  pretraining text) where they exist, and small files written here for the rest (SQuAD v2, STS-B, QQP, MNLI,
  RTE, WNLI, SWAG), capped at a few dozen examples;
- steps: 3 (distillation: 2 per stage, 3 of distillation), short sequences, batch 4 on one device.

The optimizer, learning rate, warmup ratio, weight decay, task options (other than lengths) and bf16 stay as the
recipe sets them. Used by `tests/test_recipes.py`, which runs every recipe this way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "configs")

SENTENCES = [
    "the film was a delight from start to finish .",
    "a dull , lifeless and overlong mess .",
    "brilliant acting and a sharp script carry the story .",
    "the museum in paris opened a new wing in the spring .",
    "warm , funny and wise , it never hits a false note .",
    "the river flows north through three provinces before it reaches the sea .",
    "nothing works here at all .",
    "a moving portrait of a family in a small town .",
]

# Real files under --data-dir (relative to it): task -> (train, validation).
REAL = {
    "squad": ("squad/dev-v1.1.json", "squad/dev-v1.1.json"),
    "sst2": ("glue/SST-2/dev.tsv", "glue/SST-2/dev.tsv"),
    "cola": ("glue/CoLA/dev.tsv", "glue/CoLA/dev.tsv"),
    "mrpc": ("glue/MRPC/train.tsv", "glue/MRPC/dev.tsv"),
    "qnli": ("glue/QNLI/dev.tsv", "glue/QNLI/dev.tsv"),
    "ner": ("conll2003/dev.txt", "conll2003/test.txt"),
}
# GLUE TSV layouts of the written files: header (text_a, text_b, label), label tokens (None: a 0-5 score).
GLUE_WRITTEN = {
    "stsb": (("sentence1", "sentence2", "score"), None),
    "qqp": (("question1", "question2", "is_duplicate"), ("0", "1")),
    "mnli": (("sentence1", "sentence2", "gold_label"), ("entailment", "neutral", "contradiction")),
    "rte": (("sentence1", "sentence2", "label"), ("entailment", "not_entailment")),
    "wnli": (("sentence1", "sentence2", "label"), ("0", "1")),
    "sst2": (("sentence", None, "label"), ("0", "1")),
    "cola": (("sentence", None, "label"), ("0", "1")),
    "mrpc": (("#1 String", "#2 String", "Quality"), ("0", "1")),
    "qnli": (("question", "sentence", "label"), ("entailment", "not_entailment")),
}
TINY_MODEL = ["--model", "mobilebert-test", "--model-config", json.dumps({"vocab_size": 30522})]
TINY_DISTILL = {  # 2 layers each; the recipe's student/teacher kinds, the real vocabulary
    "student": dict(
        preset="mobilebert-uncased",
        embedding_size=32,
        hidden_size=64,
        intra_bottleneck_size=16,
        intermediate_size=64,
        num_hidden_layers=2,
        num_feedforward_networks=2,
        max_position_embeddings=64,
    ),
    "teacher": dict(
        preset="ibbert-large-teacher",
        embedding_size=32,
        hidden_size=64,
        intra_bottleneck_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        max_position_embeddings=64,
    ),
}


def command_of(recipe: dict) -> str:
    """The `mobilebert-jax` command a recipe is for."""
    if "student" in recipe and "distill" in recipe:
        return "distill"
    return "pretrain" if recipe.get("task") == "pretraining" else "finetune"


def _write(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _glue_tsv(task: str, path: str) -> str:
    (a, b, lab), labels = GLUE_WRITTEN[task]
    head = [a] + ([b] if b else []) + [lab]
    rows = []
    for i, s in enumerate(SENTENCES * 2):
        label = f"{(i * 0.7) % 5:.1f}" if labels is None else labels[i % len(labels)]
        rows.append([s] + ([SENTENCES[-1 - i % len(SENTENCES)]] if b else []) + [label])
    return _write(path, "\t".join(head) + "\n" + "".join("\t".join(r) + "\n" for r in rows))


def _squad_v2(path: str) -> str:
    paras = []
    for i, s in enumerate(SENTENCES):
        c = f"{s} the critic said so in paris ."
        answerable = i % 2 == 0
        qa = {
            "id": f"q{i}",
            "question": "where did the critic say so ?" if answerable else "who won the cup ?",
        }
        if answerable:
            qa.update(is_impossible=False, answers=[{"text": "paris", "answer_start": c.index("paris")}])
        else:
            qa.update(
                is_impossible=True, answers=[], plausible_answers=[{"text": "critic", "answer_start": 4}]
            )
        paras.append({"context": c, "qas": [qa]})
    return _write(path, json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": paras}]}))


def _swag(path: str) -> str:
    head = ",video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label\n"
    rows = "".join(
        f'{i},v{i},{i},"{s}","{s[:20]}",He,gold,"runs away.","sits down.","eats lunch.","waves back.",{i % 4}\n'
        for i, s in enumerate(SENTENCES)
    )
    return _write(path, head + rows)


def _documents(data_dir: str | None, path: str, max_docs: int = 24) -> str:
    """Pretraining text: SQuAD v1.1 dev contexts (real text, one sentence a line) where present."""
    docs = []
    squad = os.path.join(data_dir, "squad", "dev-v1.1.json") if data_dir else None
    if squad and os.path.exists(squad):
        with open(squad, encoding="utf-8") as f:
            data = json.load(f)["data"]
        for article in data:
            for para in article["paragraphs"][:2]:
                sents = [s.strip() + " ." for s in para["context"].split(". ") if s.strip()]
                if len(sents) >= 2:
                    docs.append("\n".join(sents))
            if len(docs) >= max_docs:
                break
    if not docs:
        docs = ["\n".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(6)]
    return _write(path, "\n\n".join(docs) + "\n")


def data_files(task: str, data_dir: str | None, work: str) -> tuple[str, str]:
    """(train, validation) files for `task`: real ones under `data_dir` where they exist, else written ones."""
    if data_dir and task in REAL:
        train, val = (os.path.join(data_dir, p) for p in REAL[task])
        if os.path.exists(train) and os.path.exists(val):
            return train, val
    if task in GLUE_WRITTEN:
        p = _glue_tsv(task, os.path.join(work, f"{task}.tsv"))
    elif task == "squad":
        p = _squad_v2(os.path.join(work, "squad.json"))  # answerable rows are valid v1.1 rows
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
        for para in d["data"][0]["paragraphs"]:
            para["qas"] = [q for q in para["qas"] if not q.get("is_impossible")]
            for q in para["qas"]:
                q.pop("is_impossible", None)
        d["data"][0]["paragraphs"] = [p_ for p_ in d["data"][0]["paragraphs"] if p_["qas"]]
        p = _write(p, json.dumps(d))
    elif task == "squad_v2":
        p = _squad_v2(os.path.join(work, "squad_v2.json"))
    elif task == "ner":
        p = _write(
            os.path.join(work, "ner.txt"),
            "".join(
                f"John B-PER\nvisited O\n{w} B-LOC\n. O\n\n" for w in ("Paris", "Rome", "Berlin", "Madrid")
            ),
        )
    elif task == "swag":
        p = _swag(os.path.join(work, "swag.csv"))
    elif task == "pretraining":
        p = _documents(data_dir, os.path.join(work, "docs.txt"))
    else:
        raise ValueError(f"no smoke data for task {task!r}")
    return p, p


def smoke_argv(recipe_path: str, output_dir: str, data_dir: str | None = None) -> list[str]:
    """The `mobilebert-jax` argv that runs `recipe_path` in its smoke form, writing to `output_dir`."""
    with open(recipe_path, encoding="utf-8") as f:
        recipe = json.load(f)
    cmd = command_of(recipe)
    work = os.path.join(output_dir, "smoke_data")
    os.makedirs(work, exist_ok=True)
    if cmd == "distill":
        configs = []
        for role in ("student", "teacher"):
            overrides = {k: v for k, v in TINY_DISTILL[role].items()}
            assert overrides.pop("preset") == recipe[role]["preset"], f"{recipe_path}: {role} preset changed"
            configs.append(
                _write(
                    os.path.join(work, f"{role}.json"),
                    json.dumps({**_preset_dict(recipe[role]["preset"]), **overrides}),
                )
            )
        train, _ = data_files("pretraining", data_dir, work)
        return [
            "distill",
            "--config",
            recipe_path,
            "--student-config",
            configs[0],
            "--teacher-config",
            configs[1],
            "--train-file",
            train,
            "--validation-file",
            train,
            "--output-dir",
            output_dir,
            "--steps-per-stage",
            "2",
            "--distill-steps",
            "3",
            "--warmup-steps",
            "1",
            "--batch-size",
            "8",
            "--max-seq-length",
            "32",
            "--max-predictions-per-seq",
            "4",
            "--num-micro-batches",
            "1",
            "--teacher-pretrain-steps",
            "3",
            "--checkpoint-every",
            "2",
            "--log-every",
            "1",
            "--mesh-data",
            "-1",
            "--mesh-fsdp",
            "1",
            "--sharding-rules",
            "dp",
            "--dupe-factor",
            "1",
            "--no-progress",
        ]
    task = recipe["task"]
    train, val = data_files(task, data_dir, work)
    long_task = task in ("squad", "squad_v2")
    argv = [
        cmd,
        "--config-file",
        recipe_path,
        *TINY_MODEL,
        "--train-file",
        train,
        "--validation-file",
        val,
        "--output-dir",
        output_dir,
        "--max-steps",
        "3",
        "--max-train-samples",
        "32",
        "--max-eval-samples",
        "16",
        "--max-seq-length",
        "64" if long_task else "48",
        "--per-device-train-batch-size",
        "4",
        "--per-device-eval-batch-size",
        "16",
        "--mesh-data",
        "1",
        "--logging-steps",
        "1",
        "--save-steps",
        "3",
        "--no-progress",
    ]
    options = dict(recipe.get("task_options") or {})
    if long_task:
        options.update(doc_stride=16, max_query_length=16)
    if options:
        argv += ["--task-options", json.dumps(options)]
    return argv


def _preset_dict(name: str) -> dict:
    from mobilebert_jax.model.config import MobileBertConfig

    return MobileBertConfig.from_preset(name).to_dict()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="a file of train/configs/")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument(
        "--data-dir", default=None, help="folder with squad/, glue/, conll2003/ (e.g. ../shared/data)"
    )
    args = ap.parse_args(argv)
    from mobilebert_jax.cli.main import main as cli_main

    run = smoke_argv(args.recipe, args.output_dir, args.data_dir)
    print("mobilebert-jax " + " ".join(run), flush=True)
    return cli_main(run)


if __name__ == "__main__":
    sys.exit(main())
