"""Full-size conversion times (MobileBERT OPT, `MobileBertForPreTraining`, 36.6M params, 146 MB) into Flax.

    python benchmarks/bench_convert.py                # PT state dict, tf_model.h5 (and TF1 with TF)
    python benchmarks/bench_convert.py --repeats 5 --json out.json

Cases, each from a random full-size checkpoint written in a temp folder:
- `pt`: an in-memory HF PyTorch state dict (numpy) → `convert.from_pytorch`.
- `h5`: a `tf_model.h5` in HF-TF's Keras layout (written here with h5py) → `convert_tf.load_tf_h5`.
- `tf1`: a google TF1 bundle with Adam slots (3x the weights on disk; written with TensorFlow, so this
  case needs it) → `convert_tf.load_tf1_checkpoint`; the reference is `tf.train.load_checkpoint` reading
  the same tensors, and the ratio is reference time / ours (> 1: we are faster).
Timings are medians of `--repeats` runs after one warm-up (files are in the page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time

import numpy as np


def _median(fn, n: int) -> float:
    fn()  # warm-up: page cache, tracing caches
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _tf2_name(key: str, config) -> tuple[str, str, bool]:
    """HF PT key → (Keras layer group, TF weight name, transpose?): the inverse of tf2_to_pytorch_names."""
    parts = key.split(".")
    group = "mobilebert"
    if parts[0] == "cls":
        group = f"{parts[1]}___cls"
        parts = [group, *parts[1:]]
    path = re.sub(r"\.layer\.(\d+)\.", r".layer_._\1.", ".".join(parts))
    segs = [s.replace("#", ".") for s in re.sub(r"\.ffn\.(\d+)\.", r".ffn#\1.", path).split(".")]
    scope, leaf = segs[-2], segs[-1]
    transpose = False
    if scope in ("position_embeddings", "token_type_embeddings"):
        segs[-1] = "embeddings"
    elif scope == "word_embeddings" or key == "cls.predictions.dense.weight":
        pass  # already PT layout, named weight
    elif scope == "LayerNorm":
        if "transform" in segs or config.normalization_type == "layer_norm":
            segs[-1] = {"weight": "gamma", "bias": "beta"}[leaf]
    elif leaf == "weight":
        segs[-1], transpose = "kernel", True
    return group, "tf_mobile_bert_for_pre_training/" + "/".join(segs) + ":0", transpose


def write_h5(path: str, state: dict, config) -> None:
    import h5py

    groups: dict[str, list[tuple[str, np.ndarray]]] = {}
    for key, a in state.items():
        group, name, transpose = _tf2_name(key, config)
        groups.setdefault(group, []).append((name, a.T if transpose else a))
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array(list(groups), dtype=object)
        for group, items in groups.items():
            g = f.create_group(group)
            g.attrs["weight_names"] = np.array([n for n, _ in items], dtype=object)
            for name, a in items:
                g.create_dataset(name, data=np.ascontiguousarray(a))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import jax

    from mobilebert_jax import MobileBertConfig, MobileBertForPreTraining
    from mobilebert_jax.checkpoints import tf_bundle as tb
    from mobilebert_jax.checkpoints.pytorch import abstract_params, flax_to_pt_name, from_pytorch
    from mobilebert_jax.checkpoints.tensorflow import (
        h5_to_pytorch_names,
        load_tf1_checkpoint,
        load_tf_h5,
        pytorch_to_tf1_names,
    )

    cfg = MobileBertConfig.from_preset("mobilebert-uncased")
    cls = MobileBertForPreTraining
    rng = np.random.default_rng(0)
    state = {}
    import flax

    for path, leaf in flax.traverse_util.flatten_dict(abstract_params(cls(cfg))).items():
        key, transpose = flax_to_pt_name(path)
        shape = leaf.shape[::-1] if transpose else leaf.shape
        state[key] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    mb = sum(a.nbytes for a in state.values()) / 1e6
    results: dict[str, dict] = {"weights_mb": mb, "tensors": len(state), "jax": jax.__version__}
    print(
        f"MobileBertForPreTraining (mobilebert-uncased): {len(state)} tensors, {mb:.1f} MB; "
        f"{os.cpu_count()} cpus, jax {jax.__version__} on {jax.default_backend()}, crc32c {tb._crc32c_impl.__name__}"
    )

    def report(name: str, seconds: float, ref: float | None = None, note: str = "") -> None:
        results[name] = {"seconds": seconds, "reference_seconds": ref}
        extra = f"  reference {ref:.3f} s, ratio {ref / seconds:.2f}x" if ref else ""
        print(f"{name:<28} {seconds:7.3f} s  {mb / seconds:7.0f} MB/s{extra}{note}")

    report("abstract_params (in each)", _median(lambda: abstract_params(cls(cfg)), args.repeats))
    report("pt -> flax", _median(lambda: from_pytorch(state, cfg, cls), args.repeats))

    with tempfile.TemporaryDirectory() as tmp:
        h5 = os.path.join(tmp, "tf_model.h5")
        write_h5(h5, state, cfg)
        back = h5_to_pytorch_names(h5)
        back.pop("cls.predictions.decoder.weight", None)
        assert back.keys() == state.keys() and all(np.array_equal(back[k], state[k]) for k in state), (
            "h5 writer"
        )
        report("h5 read + map", _median(lambda: h5_to_pytorch_names(h5), args.repeats))
        report("h5 -> flax", _median(lambda: load_tf_h5(h5, cfg, cls), args.repeats))

        try:
            import tensorflow as tf
        except ImportError:
            print("tf1 -> flax: skipped (writing the bundle needs tensorflow; reading it does not)")
        else:
            prefix = os.path.join(tmp, "mobilebert_variables.ckpt")
            tensors = pytorch_to_tf1_names(state, cfg)
            slots = {f"{n}/adam_{m}": a for n, a in tensors.items() for m in "mv"}
            names = sorted({**tensors, **slots, "global_step": np.int64(1)})
            allv = {**tensors, **slots, "global_step": np.int64(1)}
            tf.raw_ops.SaveV2(
                prefix=prefix,
                tensor_names=names,
                shape_and_slices=[""] * len(names),
                tensors=[tf.constant(allv[n]) for n in names],
            )
            size = os.path.getsize(prefix + ".data-00000-of-00001") / 1e6

            def tf_read():
                r = tf.train.load_checkpoint(prefix)
                return {n: r.get_tensor(n) for n in tensors}

            ours = tb.BundleReader(prefix).read_all(select=tensors.__contains__)
            ref = tf_read()
            assert all(ours[n].tobytes() == np.asarray(ref[n]).tobytes() for n in tensors), "bundle reader"
            t_tf = _median(tf_read, args.repeats)
            report(
                "tf1 read (weights only)",
                _median(lambda: tb.BundleReader(prefix).read_all(select=tensors.__contains__), args.repeats),
                t_tf,
            )
            report(
                "tf1 -> flax",
                _median(lambda: load_tf1_checkpoint(prefix, cfg, cls), args.repeats),
                note=f"  (file {size:.0f} MB with Adam slots)",
            )
            data = open(prefix + ".data-00000-of-00001", "rb").read()[: int(mb * 1e6)]
            t_np = _median(lambda: tb._crc32c_numpy(data), 1)
            print(
                f"{'crc32c numpy fallback':<28} {t_np:7.3f} s  {mb / t_np:7.0f} MB/s (used without google-crc32c's C ext)"
            )
            results["crc32c_numpy_fallback"] = {"seconds": t_np}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
