"""Writes the Colab notebooks (outputs stripped). Edit the cells here, then run:

    python colab/make_notebooks.py

Every notebook's first cell installs the package (on Colab) and prints `jax.devices()`. With
MOBILEBERT_JAX_SMOKE=1 (what CI sets) the notebooks shrink configs and steps so they run on CPU in seconds.
"""

from __future__ import annotations

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = "https://github.com/mobilebert-jax/mobilebert-jax"
HERE = os.path.dirname(os.path.abspath(__file__))

INSTALL = f'''# Installs the package on Colab (TPU, GPU or CPU runtime); elsewhere it uses the installed one.
import os, subprocess, sys
SMOKE = os.environ.get("MOBILEBERT_JAX_SMOKE") == "1"   # CI: tiny configs, few steps
if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    os.environ.get("MOBILEBERT_JAX_PIP", "git+{REPO}")], check=True)
import jax
print(jax.__version__, jax.default_backend(), jax.devices())'''


def badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/mobilebert-jax/mobilebert-jax/blob/main/colab/{name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def quickstart() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            f"{badge('01_quickstart_inference.ipynb')}\n\n# MobileBERT in JAX: quickstart inference\n\n"
            "Config → model → tokenizer → fill-mask, classification and question-answering outputs, and "
            "loading from an HF model directory. Set `MODEL` to a local HF directory or a hub id such as "
            "`google/mobilebert-uncased` to use pretrained weights; without one, the notebook writes a "
            "randomly initialised model (predictions are then meaningless, but every step runs)."
        ),
        new_code_cell(INSTALL),
        new_code_cell(
            "import numpy as np, jax, jax.numpy as jnp, tempfile\n"
            "import mobilebert_jax as mbj\n"
            "from mobilebert_jax.text.tokenizer import MobileBertTokenizer\n\n"
            'MODEL = os.environ.get("MOBILEBERT_JAX_MODEL", "")   # e.g. "google/mobilebert-uncased"\n'
            'preset = "mobilebert-test" if SMOKE else "mobilebert-uncased"\n'
            "config = mbj.MobileBertConfig.from_preset(preset, vocab_size=30522)\n"
            "print(config)"
        ),
        new_markdown_cell("## An HF-format directory\n\nWithout `MODEL`, write one from random weights; "
                          "`from_pretrained` reads it exactly as it reads a checkpoint from the hub."),
        new_code_cell(
            "if not MODEL:\n"
            "    MODEL = tempfile.mkdtemp()\n"
            "    rand = mbj.MobileBertForPreTraining(config)\n"
            "    mbj.save_pretrained(MODEL, mbj.init_params(rand), config, 'MobileBertForPreTraining')\n"
            "    MobileBertTokenizer.default().save_pretrained(MODEL)\n"
            "model, params = mbj.from_pretrained(MODEL, 'MobileBertForMaskedLM')\n"
            "tok = MobileBertTokenizer.from_pretrained(MODEL)\n"
            "print(type(model).__name__, sum(x.size for x in jax.tree.leaves(params)), 'parameters')"
        ),
        new_markdown_cell("## Fill-mask"),
        new_code_cell(
            'enc = tok(["the man worked as a [MASK]."], padding="longest")\n'
            "out = jax.jit(lambda p, b: model.apply({'params': p}, **b))(params, dict(enc))\n"
            "pos = int(np.argmax(enc['input_ids'][0] == tok.mask_token_id))\n"
            "top = np.argsort(-np.asarray(out.logits[0, pos]))[:5]\n"
            "print(tok.convert_ids_to_tokens(top.tolist()))"
        ),
        new_markdown_cell("## Sequence classification (a fresh head on the pretrained encoder)"),
        new_code_cell(
            "clf, clf_params = mbj.from_pretrained(MODEL, 'MobileBertForSequenceClassification', num_labels=2)\n"
            'enc = tok(["a gripping, beautifully shot film", "dull and far too long"], padding="longest")\n'
            "logits = clf.apply({'params': clf_params}, **enc).logits\n"
            "print(jax.nn.softmax(logits, -1))"
        ),
        new_markdown_cell("## Question answering"),
        new_code_cell(
            "qa, qa_params = mbj.from_pretrained(MODEL, 'MobileBertForQuestionAnswering')\n"
            'question, context = "Where is the Eiffel Tower?", "The Eiffel Tower is in Paris, France."\n'
            "enc = tok(question, context, return_offsets_mapping=True)\n"
            "offsets = enc.pop('offset_mapping')[0]               # arrays are [1, length], as HF's\n"
            "out = qa.apply({'params': qa_params}, **enc)\n"
            "s, e = int(jnp.argmax(out.start_logits[0])), int(jnp.argmax(out.end_logits[0]))\n"
            "e = max(s, e)\n"
            "print('answer span tokens', s, e, '->', repr(context[offsets[s][0]:offsets[e][1]]) "
            "if enc['token_type_ids'][0, s] == 1 else '(outside the context)')"
        ),
    ]
    return new_notebook(cells=cells, metadata=_meta())


def finetune() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            f"{badge('02_finetune_glue.ipynb')}\n\n# Fine-tune MobileBERT on a GLUE task with the sharded engine\n\n"
            "Runs on whatever is attached: a TPU VM (Colab TPU runtimes), GPUs or the CPU. Batch size, "
            "bf16 and the mesh are picked from `jax.default_backend()` and `jax.device_count()`. The data is "
            "the QNLI-derived split shipped in the package (CC BY-SA 4.0); point `TRAIN`/`DEV` at any GLUE "
            "TSV and `MODEL` at pretrained weights (an HF directory or hub id) for real results."
        ),
        new_code_cell(INSTALL),
        new_code_cell(
            "import numpy as np, jax, jax.numpy as jnp, matplotlib.pyplot as plt\n"
            "from IPython.display import clear_output, display\n"
            "import mobilebert_jax as mbj\n"
            "from mobilebert_jax.training import optim, sharding as shd\n"
            "from mobilebert_jax.jobs.config import PACKAGE_DATA\n"
            "from mobilebert_jax.jobs.data import model_arrays\n"
            "from mobilebert_jax.jobs.evaluate import evaluate_task\n"
            "from mobilebert_jax.training.objectives import loss_fn_for\n"
            "from mobilebert_jax.tasks import get_task\n"
            "from mobilebert_jax.text.tokenizer import MobileBertTokenizer\n"
            "from mobilebert_jax.training.state import create_train_state, model_init_fn\n"
            "from mobilebert_jax.training.trainer import ArrayIterator, make_train_step\n\n"
            "backend, n_dev = jax.default_backend(), jax.device_count()\n"
            "BF16 = backend in ('tpu', 'gpu')                    # bf16 compute, f32 params and optimizer\n"
            "PER_DEVICE = 32 if backend != 'cpu' else 16\n"
            "MODEL = os.environ.get('MOBILEBERT_JAX_MODEL', '')  # e.g. 'google/mobilebert-uncased'\n"
            "TRAIN = os.path.join(PACKAGE_DATA, 'qnli_demo', 'train.tsv')\n"
            "DEV = os.path.join(PACKAGE_DATA, 'qnli_demo', 'dev.tsv')\n"
            "STEPS, MAX_LEN, LR = (6, 48, 5e-4) if SMOKE else (300, 128, 5e-4 if not MODEL else 4e-5)\n"
            "print(backend, n_dev, 'devices; bf16' if BF16 else 'fp32')"
        ),
        new_markdown_cell("## Data and model"),
        new_code_cell(
            "task = get_task('qnli')\n"
            "tok = MobileBertTokenizer.from_pretrained(MODEL) if MODEL else MobileBertTokenizer.default()\n"
            "train_ex, dev_ex = task.read(TRAIN), task.read(DEV)\n"
            "if SMOKE:\n"
            "    train_ex, dev_ex = train_ex[:128], dev_ex[:32]\n"
            "train = model_arrays(task, task.featurise(train_ex, tok, MAX_LEN))\n"
            "dev_feats = task.featurise(dev_ex, tok, MAX_LEN)\n"
            "dtype = jnp.bfloat16 if BF16 else jnp.float32\n"
            "if MODEL:\n"
            "    model, params = mbj.from_pretrained(MODEL, task.model_class, dtype=dtype, **task.config_overrides())\n"
            "else:  # random init: a 4-layer MobileBERT (or the tiny test config in smoke mode)\n"
            "    preset = 'mobilebert-test' if SMOKE else 'mobilebert-uncased'\n"
            "    layers = {} if SMOKE else {'num_hidden_layers': 4}\n"
            "    config = mbj.MobileBertConfig.from_preset(preset, vocab_size=30522, **layers, **task.config_overrides())\n"
            "    model, params = task.model_cls()(config, dtype=dtype), None\n"
            "print(type(model).__name__, len(train_ex), 'train /', len(dev_ex), 'dev examples')"
        ),
        new_markdown_cell("## Mesh, sharded state and the jitted step\n\n"
                          "Batch over `data`; on 8+ devices try `shd.make_mesh(data=-1, fsdp=2)` with "
                          "`logical_rules('fsdp', ...)`."),
        new_code_cell(
            "mesh = shd.make_mesh(data=-1)\n"
            "rules = shd.logical_rules('dp', mesh, model.config)\n"
            "batch_size = PER_DEVICE * n_dev\n"
            "schedule = optim.warmup_linear_decay(LR, STEPS, STEPS // 10)\n"
            "tx = optim.adamw(schedule)\n"
            "example = {k: v[:batch_size] for k, v in train.items()}\n"
            "sharded = create_train_state(model_init_fn(model, example), tx, jax.random.key(0), mesh, rules, params=params)\n"
            "step = make_train_step(loss_fn_for(model), state_shardings=sharded.shardings, mesh=mesh, rules=rules,\n"
            "                       learning_rate=schedule)\n"
            "data = ArrayIterator(train, batch_size, seed=0)\n"
            "state, rng, losses = sharded.state, jax.random.key(1), []"
        ),
        new_markdown_cell("## Train with a live loss plot"),
        new_code_cell(
            "for i in range(STEPS):\n"
            "    state, metrics = step(state, shd.make_global_batch(next(data), shd.batch_sharding(mesh)), rng)\n"
            "    if (i + 1) % max(STEPS // 30, 1) == 0 or i + 1 == STEPS:\n"
            "        losses.append((i + 1, float(metrics['loss'])))\n"
            "        clear_output(wait=True)\n"
            "        plt.figure(figsize=(6, 3)); plt.plot(*zip(*losses)); plt.xlabel('step'); plt.ylabel('loss')\n"
            "        plt.title(f'step {i + 1}/{STEPS}'); plt.show()"
        ),
        new_markdown_cell("## Evaluate against the majority class"),
        new_code_cell(
            "metrics, preds = evaluate_task(task, model, state.params, dev_ex, dev_feats, batch_size, mesh=mesh,\n"
            "                               rules=rules, param_shardings=sharded.shardings.params)\n"
            "majority = max(np.mean([e.label == c for e in dev_ex]) for c in (0, 1))\n"
            "print('dev', metrics, '| majority class', round(float(majority), 4))"
        ),
    ]
    return new_notebook(cells=cells, metadata=_meta())


def convert() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            f"{badge('03_convert_checkpoints.ipynb')}\n\n# Convert checkpoints: PyTorch, TensorFlow and Flax\n\n"
            "HF PyTorch directories (safetensors / `pytorch_model.bin`), HF TF2 `tf_model.h5` and the "
            "original google-research TF1 checkpoints all load into the same Flax params, without "
            "TensorFlow. Here we round-trip a PyTorch model and check the outputs agree."
        ),
        new_code_cell(INSTALL),
        new_code_cell(
            "import numpy as np, tempfile, jax\n"
            "import mobilebert_jax as mbj\n"
            "from mobilebert_jax.checkpoints import pytorch as convert\n"
            'config = mbj.MobileBertConfig.from_preset("mobilebert-test" if SMOKE else "mobilebert-uncased")\n'
            "model = mbj.MobileBertForPreTraining(config)\n"
            "params = mbj.init_params(model, 0)\n"
            "ids = np.random.RandomState(0).randint(1, config.vocab_size, (2, 16))"
        ),
        new_markdown_cell("## Flax → HF directory → Flax\n\nThe directory is what "
                          "`transformers.MobileBertForPreTraining.from_pretrained` reads."),
        new_code_cell(
            "d = tempfile.mkdtemp()\n"
            "mbj.save_pretrained(d, params, config, 'MobileBertForPreTraining')\n"
            "print(sorted(os.listdir(d)))\n"
            "model2, params2, report = mbj.from_pretrained(d, return_report=True)\n"
            "print(report.summary())\n"
            "a = model.apply({'params': params}, input_ids=ids).prediction_logits\n"
            "b = model2.apply({'params': params2}, input_ids=ids).prediction_logits\n"
            "print('max |difference|:', float(abs(a - b).max()))"
        ),
        new_markdown_cell("## State dicts in memory, and the stacked (scanned) layout"),
        new_code_cell(
            "sd = convert.to_pytorch(params, config)          # PT names and layouts, numpy arrays\n"
            "print(len(sd), 'tensors, e.g.', next(iter(sd)))\n"
            "scanned = convert.from_pytorch(sd, config, 'MobileBertForPreTraining', scan_layers=True)\n"
            "m3 = mbj.MobileBertForPreTraining(config, scan_layers=True)\n"
            "c = m3.apply({'params': scanned}, input_ids=ids).prediction_logits\n"
            "print('scanned vs loop, max |difference|:', float(abs(a - c).max()))"
        ),
        new_markdown_cell(
            "## With PyTorch installed: compare against HF transformers\n\nSkipped when torch or "
            "transformers is missing (Colab TPU runtimes have neither by default)."
        ),
        new_code_cell(
            "try:\n"
            "    import torch, transformers\n"
            "except ImportError:\n"
            "    print('torch/transformers not installed: skipped')\n"
            "else:\n"
            "    pt = transformers.MobileBertForPreTraining.from_pretrained(d, attn_implementation='eager').eval()\n"
            "    with torch.no_grad():\n"
            "        ref = pt(input_ids=torch.tensor(ids)).prediction_logits.numpy()\n"
            "    print('relative error vs HF PyTorch:', float(abs(np.asarray(a) - ref).max() / abs(ref).max()))"
        ),
        new_markdown_cell(
            "## TensorFlow checkpoints (no TensorFlow needed)\n\n"
            "```bash\n"
            "mobilebert-jax convert path/to/tf_model_dir out_dir            # HF TF2 tf_model.h5\n"
            "mobilebert-jax convert path/to/mobilebert_variables.ckpt out_dir --config bert_config.json  # TF1\n"
            "mobilebert-jax convert path/to/hf_dir out_orbax --to orbax\n"
            "```"
        ),
    ]
    return new_notebook(cells=cells, metadata=_meta())


def export_litert() -> nbformat.NotebookNode:
    install = INSTALL.replace(
        f'os.environ.get("MOBILEBERT_JAX_PIP", "git+{REPO}")',
        f'os.environ.get("MOBILEBERT_JAX_PIP", "mobilebert-jax[export] @ git+{REPO}")',
    )
    cells = [
        new_markdown_cell(
            f"{badge('04_export_litert.ipynb')}\n\n# Fine-tune in JAX, deploy with LiteRT\n\n"
            "Fine-tune briefly, export to a `.tflite` (no TensorFlow: `jax.export` → StableHLO → "
            "litert-converter), run it in the LiteRT runtime (`ai-edge-litert`, what Android ships) and "
            "compare its logits with the JAX model's, in fp32 and with int8 weights (`dynamic-int8`). "
            "The data is the QNLI-derived split shipped in the package (CC BY-SA 4.0); set `MODEL` to "
            "pretrained weights (an HF directory or hub id) for meaningful predictions."
        ),
        new_code_cell(install),
        new_code_cell(
            "import json, tempfile, time, numpy as np, jax\n"
            "import mobilebert_jax as mbj\n"
            "from mobilebert_jax import export\n"
            "from mobilebert_jax.export.common import make_forward\n"
            "from mobilebert_jax.tasks import get_task\n"
            "from mobilebert_jax.jobs.config import PACKAGE_DATA, JobConfig\n"
            "from mobilebert_jax.jobs.finetune import run_finetune\n"
            "from mobilebert_jax.text.tokenizer import MobileBertTokenizer\n\n"
            "MODEL = os.environ.get('MOBILEBERT_JAX_MODEL', '')  # e.g. 'google/mobilebert-uncased'\n"
            "TRAIN = os.path.join(PACKAGE_DATA, 'qnli_demo', 'train.tsv')\n"
            "DEV = os.path.join(PACKAGE_DATA, 'qnli_demo', 'dev.tsv')\n"
            "WORK = tempfile.mkdtemp()\n"
            "if SMOKE:   # the tiny test config, a few steps\n"
            "    model_name, overrides, steps, max_len, n_dev = 'mobilebert-test', {'vocab_size': 30522}, 4, 32, 16\n"
            "else:       # random init: a 4-layer mobilebert-uncased (or MODEL's weights)\n"
            "    model_name, overrides = MODEL or 'mobilebert-uncased', {} if MODEL else {'num_hidden_layers': 4}\n"
            "    steps, max_len, n_dev = 200, 128, 200\n"
            "print(model_name, overrides, steps, 'steps')"
        ),
        new_markdown_cell("## Fine-tune\n\nThe same job as `mobilebert-jax finetune --task qnli ...`; the run "
                          "folder gets `hf_model/` (config, weights, tokenizer)."),
        new_code_cell(
            "run = os.path.join(WORK, 'run')\n"
            "job = JobConfig(task='qnli', model=model_name, model_config=overrides, train_file=TRAIN,\n"
            "                validation_file=DEV, output_dir=run, max_seq_length=max_len, max_steps=steps,\n"
            "                per_device_train_batch_size=8, learning_rate=1e-4 if not MODEL else 4e-5,\n"
            "                max_eval_samples=n_dev, logging_steps=max(steps // 10, 1), progress=False)\n"
            "result = run_finetune(job)\n"
            "print({k: v for k, v in result.items() if k.startswith('eval')})"
        ),
        new_markdown_cell(
            "## Export to LiteRT\n\n"
            "One fixed-shape signature `seq_L` per length (batch 1), int32 inputs `input_ids`, "
            "`attention_mask`, `token_type_ids`, output `logits`. Every export runs itself in LiteRT on a "
            "padded batch and refuses to finish if fp32 is off by more than 1e-5 relative. From the shell: "
            "`mobilebert-jax export RUN OUT --format litert [--quantize dynamic-int8]`."
        ),
        new_code_cell(
            "model, params = mbj.from_pretrained(os.path.join(run, 'hf_model'))\n"
            "tok = MobileBertTokenizer.from_pretrained(os.path.join(run, 'hf_model'))\n"
            "exports = {}\n"
            "for q in ('none', 'dynamic-int8'):\n"
            "    out = os.path.join(WORK, 'litert-' + q)\n"
            "    m = export.to_litert(model, params, out, seq_lengths=(max_len,), quantize=q, tokenizer=tok)\n"
            "    exports[q] = out\n"
            "    print(q, sorted(os.listdir(out)), f\"{m['size_bytes'] / 1e6:.1f} MB\",\n"
            "          'self-check error', f\"{m['verification']['max_rel_error']:.1e}\")\n"
            "print(json.dumps(m['signatures'][0], indent=1)[:400])"
        ),
        new_markdown_cell(
            "## Run the `.tflite` in LiteRT and compare with JAX\n\n"
            "`export.load_runtime(dir)` reads `export.json`, pads each input to the signature's length and "
            "returns numpy outputs; underneath it is `ai_edge_litert.interpreter.Interpreter` and a "
            "signature runner, as on a phone."
        ),
        new_code_cell(
            "task = get_task('qnli')\n"
            "pairs = [(e.text_a, e.text_b) for e in task.read(DEV)[:n_dev]]\n"
            "enc = export.calibration_batch(pairs, tok, max_len, limit=len(pairs))\n"
            "fwd = jax.jit(make_forward(model, params))\n"
            "ref = np.concatenate([np.asarray(fwd(**{k: v[i:i + 1] for k, v in enc.items()})['logits'])\n"
            "                      for i in range(len(pairs))])\n"
            "print(f\"{'':14s} {'rel. logit error':>17s} {'argmax agreement':>17s} {'ms / example':>13s}\")\n"
            "for q, out in exports.items():\n"
            "    rt = export.load_runtime(out)\n"
            "    t0 = time.perf_counter()\n"
            "    got = np.concatenate([rt(**{k: v[i:i + 1] for k, v in enc.items()})['logits'] for i in range(len(pairs))])\n"
            "    ms = (time.perf_counter() - t0) * 1e3 / len(pairs)\n"
            "    err = float(np.abs(got - ref).max() / np.abs(ref).max())\n"
            "    agree = float(np.mean(got.argmax(-1) == ref.argmax(-1)))\n"
            "    print(f'litert {q:8s}   {err:17.1e} {100 * agree:16.1f}% {ms:13.2f}')"
        ),
        new_markdown_cell(
            "## The raw LiteRT API\n\nWhat an app does with `model.tflite`: no mobilebert-jax needed."
        ),
        new_code_cell(
            "from ai_edge_litert.interpreter import Interpreter\n"
            "interp = Interpreter(model_path=os.path.join(exports['none'], 'model.tflite'))\n"
            "print(interp.get_signature_list())\n"
            "runner = interp.get_signature_runner(f'seq_{max_len}')\n"
            "one = {k: v[:1].astype(np.int32) for k, v in enc.items()}\n"
            "print('LiteRT', runner(**one)['logits'], ' JAX', ref[:1])"
        ),
        new_markdown_cell(
            "## Full int8 and ONNX\n\n"
            "```bash\n"
            "mobilebert-jax export RUN out-int8 --format litert --quantize int8 --calibration-file train.tsv\n"
            "mobilebert-jax export RUN out-onnx --format onnx --quantize dynamic-int8\n"
            "```\n"
            "Static `int8` (weights and activations) calibrates on real text from `--calibration-file`; "
            "docs/deploy.md lists the measured error, agreement, sizes and latencies."
        ),
    ]
    return new_notebook(cells=cells, metadata=_meta())


def _meta() -> dict:
    return {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "accelerator": "TPU",
        "colab": {"provenance": []},
    }


NOTEBOOKS = {
    "01_quickstart_inference.ipynb": quickstart,
    "02_finetune_glue.ipynb": finetune,
    "03_convert_checkpoints.ipynb": convert,
    "04_export_litert.ipynb": export_litert,
}


def main() -> None:
    for name, build in NOTEBOOKS.items():
        nb = build()
        nbformat.validate(nb)
        with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        print("wrote", name)


if __name__ == "__main__":
    main()
