"""`bash benchmarks/gpu.sh --dry-run`: the GPU benchmark's code path on a tiny config and the CPU backend.

Every side (ours, HF eager, torch.compile with the "eager" backend) runs every dry-run cell in its
own process, and the JSON has the figures the GPU run reports (tokens/s, ratios, XLA FLOPs, memory).
No figure here means anything for speed: this only keeps the benchmark from rotting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_benchmark_dry_run(tmp_path):
    pytest.importorskip("torch", reason="the reference side needs torch (the test extra)")
    pytest.importorskip("transformers", reason="the reference side needs transformers (the test extra)")
    out = tmp_path / "gpu.json"
    venvs = [os.path.join(ROOT, v) for v in (".venv-gpu-jax", ".venv-gpu-torch")]
    before = [os.path.exists(v) for v in venvs]
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("XLA_FLAGS", None)  # one CPU device, as on a GPU host's CPU
    p = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), "--dry-run", "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert [os.path.exists(v) for v in venvs] == before  # the packages were there: nothing installed
    result = json.loads(out.read_text())
    assert result["dry_run"] and result["skipped"] == [] and result["notes"] == []
    assert result["info"]["ours"]["backend"] == "cpu" and set(result["info"]) == {"ours", "eager", "compile"}
    rows = {(r["kind"], r["head"]): r for r in result["rows"]}
    assert set(rows) == {("train", "seqcls"), ("infer", "seqcls")}
    for r in rows.values():
        assert not [k for k in r if k.endswith("_error")], r
        for side in ("ours", "eager", "compile"):
            assert r[f"{side}_tokens_per_s"] > 0
        assert r["speedup_vs_eager"] > 0 and r["speedup_vs_compile"] > 0
    train = rows[("train", "seqcls")]
    assert train["model_tflops"] > 0 and train["ours_peak_gib"] > 0
    assert "ours tok/s" in p.stdout and "wrote" in p.stdout
