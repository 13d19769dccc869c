"""Where a `.tflite` spends its time in ai-edge-litert's Interpreter, by op type, and which ops the
XNNPACK delegate (applied by default) takes.

    python benchmarks/litert_op_profile.py out/sst2-int8-full/model.tflite --threads 2

The Python Interpreter reports no time per op, so each op of the first subgraph is cut out into a
file of its own (`export.full_integer.single_op_model`: its tensors, their quantization and constant buffers) and timed alone, with the
default delegates: invokes of that one op, median, minus the cost of invoking the cheapest op (the
call overhead). Its node count tells whether XNNPACK took it (a delegated op adds the delegate's node).
The whole file is timed too (with and without the default delegates) and its nodes listed: the sum of
the ops against the whole says how far the cut-out times stand for it. `--swap SOFTMAX=LOGISTIC
SOFTMAX=EXP` times the whole file with an op type replaced (wrong numbers, the other op's cost and
delegation): what one op's kernel and the partitions it causes cost in the whole graph.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from mobilebert_jax.export.full_integer import inline_model, op_type, single_op_model


def read_model(path: str):
    with open(path, "rb") as f:
        return inline_model(f.read())


def _fill(interp, rng) -> None:
    for d in interp.get_input_details():
        dt, shape = np.dtype(d["dtype"]), d["shape"]
        if dt == np.int8:
            x = rng.integers(-128, 128, shape).astype(np.int8)
        elif dt == np.int16:
            x = rng.integers(-3000, 3000, shape).astype(np.int16)
        elif dt.kind == "f":
            x = rng.standard_normal(shape).astype(dt)
        else:  # indices and masks: zeros are valid everywhere
            x = np.zeros(shape, dt)
        interp.set_tensor(d["index"], x)


def time_invokes(interp, iters: int, repeats: int) -> float:
    """Median over `repeats` of the mean time of `iters` invokes, in microseconds."""
    for _ in range(3):
        interp.invoke()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            interp.invoke()
        runs.append((time.perf_counter() - t0) / iters * 1e6)
    return statistics.median(runs)


def profile_ops(path: str, threads: int, iters: int = 20, repeats: int = 5) -> list[dict]:
    """Per op of the first subgraph: type, input->output dtypes, shape of the first output, whether the
    default delegate took it, microseconds alone."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = read_model(path)
    sg = model.subgraphs[0]
    rng = np.random.default_rng(0)
    rows = []
    for i, op in enumerate(sg.operators):
        interp = Interpreter(model_content=single_op_model(model, sg, op), num_threads=threads)
        interp.allocate_tensors()
        _fill(interp, rng)
        nodes = interp._get_ops_details()  # private: a delegated op adds the delegate's node
        ins = sorted({types[sg.tensors[t].type] for t in op.inputs if t >= 0})
        outs = sorted({types[sg.tensors[t].type] for t in op.outputs})
        rows.append(
            {
                "index": i,
                "op": op_type(model, op),
                "dtypes": f"{','.join(ins)}->{','.join(outs)}",
                "shape": [int(s) for s in sg.tensors[op.outputs[0]].shape],
                "delegated": len(nodes) > 1,
                "us": time_invokes(interp, iters, repeats),
            }
        )
    return rows


def whole_file(path: str, threads: int) -> dict:
    """The whole file's invoke time with and without the default delegates, and its node names."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    out = {}
    for label, resolver in (
        ("default delegates", OpResolverType.AUTO),
        ("builtin kernels only", OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES),
    ):
        interp = Interpreter(model_path=path, num_threads=threads, experimental_op_resolver_type=resolver)
        interp.allocate_tensors()
        _fill(interp, np.random.default_rng(0))
        if resolver == OpResolverType.AUTO:
            names = [n["op_name"] for n in interp._get_ops_details()]
            out["delegate_nodes"] = names.count("DELEGATE")
        out[label] = time_invokes(interp, 5, 5) / 1e3
    return out


def swapped_model(path: str, op: str, other: str) -> bytes:
    """The file at `path` with every `op` of its first subgraph replaced by the builtin `other` on the
    same tensors (its options dropped): wrong numbers, but the cost of the graph without `op`'s kernel
    and with `other`'s delegation (e.g. SOFTMAX -> LOGISTIC, which XNNPACK takes in int8)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = read_model(path)
    code = schema.OperatorCodeT()
    code.builtinCode = getattr(schema.BuiltinOperator, other)
    code.deprecatedBuiltinCode, code.version = min(code.builtinCode, 127), 2
    model.operatorCodes.append(code)
    swapped = 0
    for o in model.subgraphs[0].operators:
        if op_type(model, o) == op:
            o.opcodeIndex, o.builtinOptionsType, o.builtinOptions = len(model.operatorCodes) - 1, 0, None
            swapped += 1
    if not swapped:
        raise SystemExit(f"{path}: no {op} op in the first subgraph")
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def swap_report(path: str, swaps: list[str], threads: int) -> None:
    """Whole-file time (default delegates) as exported and with each `OP=OTHER` swap."""
    from ai_edge_litert.interpreter import Interpreter

    for swap in [None, *swaps]:
        if swap is None:
            interp = Interpreter(model_path=path, num_threads=threads)
        else:
            op, other = swap.split("=")
            interp = Interpreter(model_content=swapped_model(path, op, other), num_threads=threads)
        interp.allocate_tensors()
        _fill(interp, np.random.default_rng(0))
        parts = [n["op_name"] for n in interp._get_ops_details()].count("DELEGATE")
        ms = time_invokes(interp, 20, 5) / 1e3
        print(f"{swap or 'as exported':24s} {ms:7.2f} ms  {parts} delegate partitions", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a .tflite file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the per-op rows here")
    ap.add_argument("--top", type=int, default=15, help="print the slowest N ops")
    ap.add_argument(
        "--swap",
        nargs="*",
        metavar="OP=OTHER",
        help="only time the whole file as exported and with every OP replaced by the builtin OTHER "
        "(e.g. SOFTMAX=LOGISTIC SOFTMAX=EXP: what the softmax's kernel and its partitions cost)",
    )
    args = ap.parse_args()
    if args.swap:
        swap_report(args.model, args.swap, args.threads)
        return 0
    whole = whole_file(args.model, args.threads)
    rows = profile_ops(args.model, args.threads)
    base = min(r["us"] for r in rows)
    for r in rows:
        r["us_net"] = max(r["us"] - base, 0.0)
    total = sum(r["us_net"] for r in rows) / 1e3
    print(
        f"{args.model}: {len(rows)} ops; whole file {whole['default delegates']:.1f} ms with the default "
        f"delegates ({whole['delegate_nodes']} delegate partitions), {whole['builtin kernels only']:.1f} ms "
        f"builtin kernels only; ops alone sum to {total:.1f} ms (each minus {base:.1f} us call overhead), "
        f"{args.threads} threads"
    )
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["op"], r["dtypes"], r["delegated"]), []).append(r["us_net"])
    print(f"{'op':22s} {'dtypes':26s} {'XNNPACK':>8s} {'count':>6s} {'ms':>8s} {'share':>6s}")
    for (op, dt, dg), us in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        ms = sum(us) / 1e3
        print(f"{op:22s} {dt:26s} {'yes' if dg else 'no':>8s} {len(us):6d} {ms:8.2f} {ms / total:6.1%}")
    print("slowest ops:")
    for r in sorted(rows, key=lambda r: -r["us_net"])[: args.top]:
        print(
            f"  #{r['index']:5d} {r['op']:18s} {r['dtypes']:22s} {str(r['shape']):18s} {r['us_net']:8.1f} us"
        )
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"whole": whole, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
