"""The docs run: every Python block and every small-data command line of README.md and docs/*.md.

What runs
- Python: a file's ```python blocks, in order, in one fresh subprocess (one namespace, so a block may use
  what an earlier one defined); each block is compiled under `FILE:LINE`, so a traceback names the line
  of the doc.
- Shell: in ```bash blocks, every `mobilebert-jax ...` line (with its `\\` continuations) runs as
  `python -m mobilebert_jax.cli ...`, in order, and must exit 0. Other lines (pip, `bash scripts/...`,
  gcloud, `python benchmarks/...`) are not run.
- A block that cannot run here carries a marker on the line right before its fence:
      <!-- doc-test: skip (needs a hub) -->
  It is reported as a skipped test with its reason (`pytest -rs` lists them). Any other `doc-test:`
  comment is an error, and a block without a marker must run.

Where the examples' paths come from (the one mechanism): the docs use real relative paths, and the
`workdir` fixture writes tiny versions of exactly those paths into one shared tmp dir, the working
directory of every block: `glue/SST-2/{train,dev,test}.tsv` (a few SST-2-style sentences), `lines.txt`,
`corpus.txt` (pretraining text), `runs/{sst2,conll,squad,mlm}/hf_model` (HF-format directories written
with `save_pretrained`: the 2-layer `mobilebert-test` preset with the packaged 30,522-token vocab and
512 positions, heads
SequenceClassification / TokenClassification / QuestionAnswering / MaskedLM) and `export/sst2` (a LiteRT
fp32 export of `runs/sst2/hf_model`), plus copies of the TF fixtures written by real TensorFlow
(`tests/fixtures/tf`) at `uncased_L-24_H-128_B-512_A-4_F-4_OPT/` (a TF1 checkpoint, the layout of
google's release) and `tf_mobilebert/` (an HF `tf_model.h5`). A doc that needs another file writes it
in an earlier block.
Subprocesses see one CPU device (the suite's forced 8-device XLA flag is dropped) and no hub.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
SKIP = re.compile(r"^skip \((.+)\)$")
FENCE = re.compile(r"^```(\w*)\s*$")
TIMEOUT = 600

SENTENCES = [
    "a gripping film",
    "dull and far too long",
    "a triumph of style and heart",
    "it never finds its feet",
    "warm , generous and very funny",
    "a tedious , joyless mess",
    "one of the best films of the year",
    "flat , lifeless and boring",
]

TF1 = "uncased_L-24_H-128_B-512_A-4_F-4_OPT"  # google's release folder name, here a tiny TF1 checkpoint
TF_FIXTURES = {
    **{
        f"tf1/{n}": f"{TF1}/{n}"
        for n in (
            "bert_config.json",
            "mobilebert_variables.ckpt.index",
            "mobilebert_variables.ckpt.data-00000-of-00001",
        )
    },
    "h5/pretraining/config.json": "tf_mobilebert/config.json",
    "h5/pretraining/tf_model.h5": "tf_mobilebert/tf_model.h5",
}

# Runs in a subprocess (the test process never imports jax): the tiny models the docs' paths name.
SETUP = """
import mobilebert_jax as mbj
from mobilebert_jax import export

tiny = dict(vocab_size=30522, max_position_embeddings=512)  # the packaged vocab, real lengths
heads = {
    "runs/sst2/hf_model": ("MobileBertForSequenceClassification", dict(num_labels=2)),
    "runs/conll/hf_model": ("MobileBertForTokenClassification", dict(
        num_labels=5, id2label={0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"})),
    "runs/squad/hf_model": ("MobileBertForQuestionAnswering", {}),
    "runs/mlm/hf_model": ("MobileBertForMaskedLM", {}),
}
tok = mbj.MobileBertTokenizer.default()
for folder, (cls, kw) in heads.items():
    model, params = mbj.from_pretrained("mobilebert-test", cls, **tiny, **kw)
    mbj.save_pretrained(folder, params, model.config, cls)
    tok.save_pretrained(folder)
model, params = mbj.from_pretrained("runs/sst2/hf_model", "MobileBertForSequenceClassification")
export.to_litert(model, params, "export/sst2", seq_lengths=(16, 32), tokenizer=tok)
"""

# Executes the blocks given as JSON [(label, source)] in one namespace.
RUNNER = """
import json, sys
ns = {"__name__": "__main__"}
for label, source in json.load(open(sys.argv[1])):
    print(f"doc-test: running {label}", flush=True)
    exec(compile(source, label, "exec"), ns)
"""


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repo
    line: int  # 1-based line of the opening fence
    lang: str
    source: str
    skip: str | None  # the reason, when marked

    @property
    def label(self) -> str:
        return f"{self.doc}:{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    """Fenced blocks of `path` with their markers; a malformed marker raises naming its line."""
    doc = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i, pending = [], 0, None
    while i < len(lines):
        m = MARKER.match(lines[i].strip())
        if m:
            s = SKIP.match(m.group(1))
            if not s:
                raise ValueError(
                    f"{doc}:{i + 1}: unknown marker {lines[i].strip()!r}; expected 'skip (reason)'"
                )
            pending = (i + 1, s.group(1))
            i += 1
            continue
        f = FENCE.match(lines[i])
        if f:
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if pending and pending[0] != start - 1:
                raise ValueError(
                    f"{doc}:{pending[0]}: a doc-test marker must be the line right before a fence"
                )
            blocks.append(Block(doc, start, f.group(1), "\n".join(body) + "\n", pending and pending[1]))
            pending = None
        elif pending and lines[i].strip():
            raise ValueError(f"{doc}:{pending[0]}: a doc-test marker must be the line right before a fence")
        i += 1
    if pending:
        raise ValueError(f"{doc}:{pending[0]}: a doc-test marker with no block after it")
    return blocks


def cli_lines(block: Block) -> list[str]:
    """The `mobilebert-jax ...` command lines of a bash block, continuations joined."""
    out, cur = [], ""
    for line in block.source.splitlines():
        cur = cur + " " + line.strip() if cur else line.strip()
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        if cur.startswith("mobilebert-jax "):
            out.append(cur)
        cur = ""
    return out


ALL = [b for p in DOC_FILES for b in parse_blocks(p)]
RUNNABLE = [b for b in ALL if b.lang == "python" or (b.lang == "bash" and cli_lines(b))]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="",  # one CPU device, as a reader's machine has
        MPLBACKEND="Agg",
        HF_HUB_OFFLINE="1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    r = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    if r.returncode != 0:
        pytest.fail(
            f"{what} exited {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-6000:]}"
        )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("docs")
    sst = d / "glue" / "SST-2"
    sst.mkdir(parents=True)
    rows = lambda xs: "".join(f"{s}\t{1 - i % 2}\n" for i, s in enumerate(xs))  # noqa: E731
    (sst / "train.tsv").write_text("sentence\tlabel\n" + rows(SENTENCES * 2), encoding="utf-8")
    (sst / "dev.tsv").write_text("sentence\tlabel\n" + rows(SENTENCES), encoding="utf-8")
    test = "".join(f"{i}\t{s}\n" for i, s in enumerate(SENTENCES))
    (sst / "test.tsv").write_text("index\tsentence\n" + test, encoding="utf-8")
    (d / "lines.txt").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    docs = ["\n".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(4)]
    (d / "corpus.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    for src, dst in TF_FIXTURES.items():  # checkpoints written by real TensorFlow, at the docs' paths
        (d / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "tests" / "fixtures" / "tf" / src, d / dst)
    _run([sys.executable, "-c", SETUP], d, "the fixture's model set-up")
    return d


def test_markers_are_wellformed_and_every_doc_has_runnable_blocks():
    """Parsing raised nothing above; every marker has a reason; the README's two commands are as promised."""
    assert all(b.skip.strip() for b in ALL if b.skip is not None)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "bash scripts/main.sh     # the main job: set-up, then a complete fine-tuning run on CPU" in readme
    assert (
        "bash scripts/test.sh     # set-up with the test references, then the test suite (pytest)" in readme
    )
    assert {b.doc for b in RUNNABLE if not b.skip} >= {"README.md", "docs/training.md"}


def test_parser_on_a_sample(tmp_path):
    """Markers attach to the next fence only, bad markers are refused, continuations are joined."""
    md = tmp_path / "sample.md"
    md.write_text(
        "<!-- doc-test: skip (needs a hub) -->\n```bash\nmobilebert-jax finetune --task sst2 \\\n"
        "    --max-steps 2  # note\npip install x\n```\n\n```python\nx = 1\n```\n",
        encoding="utf-8",
    )
    bash, py = parse_blocks(md)
    assert (bash.skip, bash.line, py.skip, py.lang) == ("needs a hub", 2, None, "python")
    assert cli_lines(bash) == ["mobilebert-jax finetune --task sst2 --max-steps 2  # note"]
    for bad in (
        "<!-- doc-test: skipp (x) -->\n```python\n```\n",
        "<!-- doc-test: skip (x) -->\ntext\n```python\n```\n",
    ):
        md.write_text(bad, encoding="utf-8")
        with pytest.raises(ValueError, match="sample.md:1"):
            parse_blocks(md)


@pytest.mark.parametrize("doc", sorted({b.doc for b in ALL if b.lang == "python" and not b.skip}))
def test_python_blocks_run(doc, workdir, tmp_path):
    blocks = [b for b in ALL if b.doc == doc and b.lang == "python" and not b.skip]
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps([(b.label, b.source) for b in blocks]), encoding="utf-8")
    _run([sys.executable, "-c", RUNNER, str(script)], workdir, f"{doc}'s Python blocks")


@pytest.mark.parametrize("doc", sorted({b.doc for b in RUNNABLE if b.lang == "bash" and not b.skip}))
def test_cli_lines_run(doc, workdir):
    blocks = [b for b in ALL if b.doc == doc and b.lang == "bash" and not b.skip and cli_lines(b)]
    for b in blocks:
        for line in cli_lines(b):
            args = shlex.split(line, comments=True)[1:]
            _run([sys.executable, "-m", "mobilebert_jax.cli", *args], workdir, f"{b.label}: {line}")


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.skip], ids=lambda b: b.label)
def test_skipped_block(block):
    """One skipped test per marked block, so the run lists each with its reason."""
    pytest.skip(f"{block.label} ({block.lang}): {block.skip}")
