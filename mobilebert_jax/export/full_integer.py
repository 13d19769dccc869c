"""`--quantize int8-full`: the full-integer LiteRT graph, every op between the inputs and the logits on
integer tensors (the graph phone NPUs take whole), and the fake quantization `finetune --qat int8-full`
trains through.

- `full_integer` quantizes the fp32 flatbuffer of the "integer" attention graph with Google's AI Edge
  Quantizer (litert-quantizer) under `FULL_INT_RECIPE`, ranges min/max over calibration text, adjusted
  by `cpu_ready_ranges` and `coarser_add_constants` so that XNNPACK takes the int8 ops on the CPU;
- `float_islands` (`--float-ops SOFTMAX`): chosen int8 ops computed in float between their int8
  tensors, which XNNPACK then runs in the int8 graph's partition (faster on the CPU; not full-integer);
- `graph_audit` (ops by type and dtype, the float ops left) and `cpu_delegate_audit` (which ops the CPU
  delegate takes, each cut out with `single_op_model`) fill export.json;
- `full_integer_fake_quant` rounds, in the JAX forward, every tensor the file quantizes (QAT), on
  static ranges (`calibrate_full_integer_ranges`, a `RangeBook`) or each batch's own.

Measured: docs/deploy.md. Static int8 with float activations where needed (`--quantize int8`) is
`quantize.py`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

# (tensor-name regex (re.search), TFLite op or "*", activation bits) for Google's AI Edge Quantizer
# (litert-quantizer) on the fp32 flatbuffer of the "integer" attention graph; the last matching row
# decides. Weights: int8, symmetric, one scale per output channel. Activations: int8 (asymmetric, one
# range per tensor); a row with 16 makes them int16 (symmetric: TFLite's 16x8 kernels). Measured on the
# fine-tuned full-size SST-2 model (docs/deploy.md), before `cpu_ready_ranges`: int8 everywhere agreed
# with fp32 on 98.5% of 272 held-out sentences at 40 ms a sentence; the residual stream and NoNorm in
# int16 (rows ("mobilebert/(embeddings|encoder)/", "ADD" and "MUL", 16)) on 97.8% at 113 ms (TFLite's
# int16 elementwise kernels and 364 int8<->int16 QUANTIZE ops): int8 held that model's residual stream.
# With `cpu_ready_ranges` and `coarser_add_constants` (what XNNPACK needs to take the ops): 99.6%.
FULL_INT_RECIPE = ((".*", "*", 8),)
# Ops kept float in a full-integer file (`graph_audit`): none inside the encoder. The three int32
# inputs enter as integers; the outputs leave float (one DEQUANTIZE each) so that callers read logits.


def full_integer_recipe(recipe: Any = None) -> list[dict[str, Any]]:
    """The AI Edge Quantizer recipe of `recipe` rows (default `FULL_INT_RECIPE`); the graph's outputs
    stay float (DEQUANTIZE)."""

    def config(bits: int) -> dict[str, Any]:
        act = {"num_bits": bits, "symmetric": bits == 16, "granularity": "TENSORWISE", "dtype": "INT"}
        weight = {"num_bits": 8, "symmetric": True, "granularity": "CHANNELWISE", "dtype": "INT"}
        return {
            "activation_tensor_config": act,
            "weight_tensor_config": weight,
            "compute_precision": "INTEGER",
            "explicit_dequantize": False,
            "skip_checks": False,
            "min_weight_elements": 0,
        }

    rows = [
        {"regex": r, "operation": op, "algorithm_key": "min_max_uniform_quantize", "op_config": config(b)}
        for r, op, b in (FULL_INT_RECIPE if recipe is None else recipe)
    ]
    return rows + [{"regex": ".*", "operation": "OUTPUT", "algorithm_key": "no_quantize"}]


def inline_model(raw: bytes) -> Any:
    """The flatbuffer `raw` as a schema `ModelT` with every buffer inline (the converter and the
    quantizer write large ones after the tables, at offsets that re-serialisation would drop)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    for buf in model.buffers or []:
        if buf.offset > 1 and buf.size:
            buf.data = np.frombuffer(raw[buf.offset : buf.offset + buf.size], np.uint8)
            buf.offset = buf.size = 0
    return model


def _quantizer_ready(path: str) -> bytes:
    """The fp32 flatbuffer at `path` as the quantizer reads it: weights inline (the converter writes them
    after the tables, which the quantizer's re-serialisation drops) and every FULLY_CONNECTED bias 1-D
    (the converter leaves a folded NoNorm shift as [1, 1, N], which the quantizer's per-channel bias
    scales would be written against the wrong axis of: an invalid file)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        raw = f.read()
    model = inline_model(raw)
    fc = schema.BuiltinOperator.FULLY_CONNECTED
    for sg in model.subgraphs or []:
        for op in sg.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            if (
                max(code.builtinCode, code.deprecatedBuiltinCode) == fc
                and len(op.inputs) > 2
                and op.inputs[2] >= 0
            ):
                bias = sg.tensors[op.inputs[2]]
                bias.shape = np.asarray([int(np.prod(bias.shape))], np.int32)
    builder = flatbuffers.Builder(len(raw) + (1 << 20))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def full_integer(
    src: str, dst: str, calibration: dict[str, list[dict[str, np.ndarray]]], float_ops: Sequence[str] = ()
) -> None:
    """Quantizes the fp32 `.tflite` at `src` into the full-integer file `dst` (`full_integer_recipe`),
    ranges min/max over `calibration` ({signature: [its inputs, one batch each]}); the op types in
    `float_ops` then compute in float between int8 tensors (`float_islands`)."""
    from litert_quantizer import calibrator, quantizer
    from litert_quantizer.utils import qsv_utils

    model = bytearray(_quantizer_ready(src))
    q = quantizer.Quantizer(model, full_integer_recipe())
    # min/max over all calibration batches: `Quantizer.calibrate` keeps a moving average (0.95) of the
    # per-batch ranges, which clips the extremes (the tiny test model's logits: error 0.28 → 0.05)
    calib = calibrator.Calibrator(
        bytes(model), num_threads=os.cpu_count() or 1, qsv_update_func=qsv_utils.min_max_update
    )
    calib.calibrate(calibration, q._recipe_manager)  # the recipe the Quantizer parsed (no public getter)
    qsvs = cpu_ready_ranges(bytes(model), calib.get_model_qsvs())
    result = q.quantize(qsvs, enable_progress_bar=False, enable_progress_report=False)
    with open(dst, "wb") as f:
        f.write(float_islands(coarser_add_constants(bytes(result.quantized_model)), float_ops))


# Op types `--float-ops` may run in float inside the full-integer graph (`float_islands`): one int8
# activation in, one int8 activation out, and a float kernel XNNPACK runs in the int8 graph's partition.
FLOAT_OP_CHOICES = ("SOFTMAX", "TANH")


def float_islands(model: bytes, ops: Sequence[str]) -> bytes:
    """The quantized flatbuffer `model` with every int8 op of a type in `ops` (`FLOAT_OP_CHOICES`)
    computing in float: DEQUANTIZE of its int8 input, the op on float tensors, QUANTIZE into its int8
    output (the same tensor, the same scale and zero point). What the op computes is the exact function
    rounded once onto the output's int8 grid. The reason on the CPU: TFLite's int8 SOFTMAX is not taken
    by XNNPACK (and on x86 computes its exponentials in fixed point), so each one splits the delegated
    graph; DEQUANTIZE, the float SOFTMAX and QUANTIZE all run inside XNNPACK's partition (docs/deploy.md).
    An NPU compiler sees these ops as float ones."""
    if not ops:
        return model
    unknown = sorted(set(ops) - set(FLOAT_OP_CHOICES))
    if unknown:
        raise ValueError(f"--float-ops {unknown[0]}: not one of {FLOAT_OP_CHOICES}")
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    graph = inline_model(model)
    dequantize = _op_code(graph, schema.BuiltinOperator.DEQUANTIZE)
    quantize = _op_code(graph, schema.BuiltinOperator.QUANTIZE)
    for sg in graph.subgraphs or []:
        operators = []
        for op in sg.operators or []:
            int8 = op_type(graph, op) in ops and all(
                sg.tensors[t].type == schema.TensorType.INT8 for t in (op.inputs[0], op.outputs[0])
            )
            operators += _float_island(graph, sg, op, dequantize, quantize) if int8 else [op]
        sg.operators = operators
    builder = flatbuffers.Builder(len(model) + (1 << 20))
    builder.Finish(graph.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _float_island(graph: Any, sg: Any, op: Any, dequantize: int, quantize: int) -> list[Any]:
    """[DEQUANTIZE, `op` on float twins of its first input and its output, QUANTIZE] (`float_islands`)."""
    from ai_edge_litert import schema_py_generated as schema

    def unary(code: int, src: int, dst: int) -> Any:
        new = schema.OperatorT()
        new.opcodeIndex, new.inputs, new.outputs = (
            code,
            np.asarray([src], np.int32),
            np.asarray([dst], np.int32),
        )
        return new

    x, y = op.inputs[0], op.outputs[0]
    fx, fy = _float_twin(graph, sg, x), _float_twin(graph, sg, y)
    op.inputs, op.outputs = np.asarray([fx, *op.inputs[1:]], np.int32), np.asarray([fy], np.int32)
    return [unary(dequantize, x, fx), op, unary(quantize, fy, y)]


def _op_code(graph: Any, builtin: int) -> int:
    """The index of `builtin`'s operator code in `graph` (a schema `ModelT`), added if missing."""
    from ai_edge_litert import schema_py_generated as schema

    for i, code in enumerate(graph.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    graph.operatorCodes.append(code)
    return len(graph.operatorCodes) - 1


def _float_twin(graph: Any, sg: Any, index: int) -> int:
    """A new float32 tensor of subgraph `sg` shaped as tensor `index`, named after it (`<name>/float`:
    the graph audit places it where that tensor is); returns its index."""
    from ai_edge_litert import schema_py_generated as schema

    src = sg.tensors[index]
    twin = schema.TensorT()
    twin.shape = np.asarray(src.shape, np.int32)
    twin.shapeSignature = None if src.shapeSignature is None else np.asarray(src.shapeSignature, np.int32)
    twin.type = schema.TensorType.FLOAT32
    name = src.name.decode() if isinstance(src.name, bytes) else (src.name or f"tensor{index}")
    twin.name = f"{name}/float"
    twin.buffer = 0  # the empty buffer: computed, not constant
    sg.tensors.append(twin)
    return len(sg.tensors) - 1


# XNNPACK takes an int8 ADD only where each input's scale is at least 2**-10 of the output's (its
# qs8 add kernel's fixed-point range); TFLite's builtin kernel, which runs the others, is ~5x slower.
_XNNPACK_ADD_MIN_SCALE_RATIO = 2.0**-10


def coarser_add_constants(model: bytes) -> bytes:
    """The quantized flatbuffer `model` with every constant int8 operand of an ADD whose scale is below
    `_XNNPACK_ADD_MIN_SCALE_RATIO` of the ADD's output scale requantized (symmetric) to a scale just
    above it, so that XNNPACK takes the op. These are NoNorm shifts far smaller than a step of the
    residual stream they are added to: the constant's new step is ~1/1000 of the output's, so the
    sums round as before up to that."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    graph = inline_model(model)
    changed = 0
    for sg in graph.subgraphs or []:
        for op in sg.operators or []:
            code = graph.operatorCodes[op.opcodeIndex]
            out = sg.tensors[op.outputs[0]]
            if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.ADD or (
                out.type != schema.TensorType.INT8 or out.quantization is None
            ):
                continue
            floor = float(out.quantization.scale[0]) * _XNNPACK_ADD_MIN_SCALE_RATIO * (1 + 1e-3)
            for t in op.inputs:
                changed += _requantize_constant(graph, sg.tensors[t], floor)
    if not changed:
        return model
    builder = flatbuffers.Builder(len(model) + (1 << 20))
    builder.Finish(graph.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _requantize_constant(graph: Any, tensor: Any, floor: float) -> int:
    """Requantizes the constant int8 per-tensor `tensor` symmetric with a scale >= `floor` where its
    scale is below `floor`; returns 1 if it did."""
    buf = graph.buffers[tensor.buffer] if tensor.buffer else None
    q = tensor.quantization
    if buf is None or buf.data is None or not len(buf.data) or q is None or q.scale is None:
        return 0
    if len(q.scale) != 1 or float(q.scale[0]) >= floor:
        return 0
    from ai_edge_litert import schema_py_generated as schema

    real = (np.asarray(buf.data).view(np.int8).astype(np.float64) - q.zeroPoint[0]) * q.scale[0]
    scale = max(floor, float(np.abs(real).max()) / 127.0)
    new = schema.BufferT()  # a buffer of its own: the old one may be shared
    new.data = np.clip(np.rint(real / scale), -127, 127).astype(np.int8).view(np.uint8)
    graph.buffers.append(new)
    tensor.buffer = len(graph.buffers) - 1
    q.scale = np.asarray([scale], np.float32)
    q.zeroPoint = np.asarray([0], np.int64)
    return 1


# Ops that pass their input's quantization on to their output (the quantizer's SAME_AS_INPUT_SCALE):
# a range set on the tensor before them is the range of the tensor after them.
_PASS_THROUGH = ("RESHAPE", "TRANSPOSE")


# How far below the lowest calibrated score the attention's padded keys sit (`cpu_ready_ranges`): each
# then weighs at most exp(-12) of a row's largest, 0 in the int8 probabilities and at most 127 * 6e-6
# of their sum.
MASK_FILL_MARGIN = 12.0


def cpu_ready_ranges(model: bytes, qsvs: dict[str, Any]) -> dict[str, Any]:
    """`qsvs` (calibrated min/max by tensor name, of the fp32 flatbuffer `model`) adjusted in two places.

    1. The second operand of every BATCH_MATMUL (the attention's keys and values) and the RESHAPE /
       TRANSPOSE chain that makes it get the range [-128/127 M, M], M its largest |value|: quantized
       asymmetric, zero point 0, which XNNPACK's int8 batch matmul needs of that operand to take the op
       (with another zero point it runs in TFLite's builtin kernel, 40x slower at [4, 128, 32] x
       [4, 32, 128]); the scale is a symmetric range's, about what keys and values, spread about 0, had.
    2. The masked scores (an ADD or SELECT_V2 of a BATCH_MATMUL's scores feeding a SOFTMAX: real scores,
       or about -INTEGER_MASK_FILL at padded keys) get the range of the real scores widened down by `MASK_FILL_MARGIN`, not down to the fill:
       the fill rounds to the range's low end, still negligible after the softmax, and the scores keep
       a step of (range + 12) / 255 instead of (max + 64) / 255.
    """
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    out = dict(qsvs)
    for sg in graph.subgraphs or []:
        producer = {int(t): op for op in sg.operators or [] for t in op.outputs}
        consumers: dict[int, list] = {}
        for op in sg.operators or []:
            for t in op.inputs:
                consumers.setdefault(int(t), []).append(op)

        def name(t: int, sg: Any = sg) -> str:
            return sg.tensors[t].name.decode()

        for op in sg.operators or []:
            if op_type(graph, op) == "BATCH_MATMUL":
                t = int(op.inputs[1])
                while True:
                    if name(t) in out:
                        m = np.maximum(np.abs(out[name(t)]["min"]), np.abs(out[name(t)]["max"]))
                        out[name(t)] = {**out[name(t)], "min": -m * 128.0 / 127.0, "max": m}
                    src = producer.get(t)
                    if src is None or op_type(graph, src) not in _PASS_THROUGH:
                        break
                    t = int(src.inputs[0])
            masked = int(op.outputs[0])
            scores = [
                int(t) for t in op.inputs if t in producer and op_type(graph, producer[t]) == "BATCH_MATMUL"
            ]
            if (
                op_type(graph, op) in ("ADD", "SELECT_V2")
                and len(scores) == 1
                and any(op_type(graph, c) == "SOFTMAX" for c in consumers.get(masked, []))
                and name(masked) in out
                and name(scores[0]) in out
            ):
                real = out[name(scores[0])]
                lo, hi = np.asarray(real["min"]) - MASK_FILL_MARGIN, np.maximum(real["max"], 0.0)
                out[name(masked)] = {**out[name(masked)], "min": lo, "max": hi}
                # an ADD's inputs need >= 2**-10 of its output's scale (`coarser_add_constants`): near-0
                # scores (early layers) get a range that wide, finer than the sum's step all the same
                half = np.maximum((hi - lo) * _XNNPACK_ADD_MIN_SCALE_RATIO * 1.01 / 2, 0)
                mid = (np.asarray(real["min"]) + np.asarray(real["max"])) / 2
                out[name(scores[0])] = {
                    **real,
                    "min": np.minimum(real["min"], mid - half),
                    "max": np.maximum(real["max"], mid + half),
                }
    return out


def graph_audit(path: str) -> dict[str, Any]:
    """Ops of the first subgraph of the `.tflite` at `path` by type and by their tensors' dtypes, and the
    ops computing in float: `float_ops` (every op with a float32 input or output, DEQUANTIZE of the
    outputs included) and `encoder_float_ops` (those whose output belongs to the encoder or the
    embeddings: zero in a full-integer file). Needs the tensor names (`--keep-tensor-names` or before
    compaction)."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(bytearray(f.read()), 0)
    names = _op_names()
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    sg = model.Subgraphs(0)
    by_op: dict[str, dict[str, int]] = {}
    float_ops: dict[str, int] = {}
    inside: list[str] = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        ins = sorted({types[sg.Tensors(t).Type()] for t in op.InputsAsNumpy() if t >= 0})
        outs = sorted({types[sg.Tensors(t).Type()] for t in op.OutputsAsNumpy()})
        key = f"{','.join(ins)}->{','.join(outs)}"
        by_op.setdefault(name, {})
        by_op[name][key] = by_op[name].get(key, 0) + 1
        if "float32" in ins + outs:
            float_ops[name] = float_ops.get(name, 0) + 1
            out_name = (sg.Tensors(op.Outputs(0)).Name() or b"").decode()
            if "/encoder/" in out_name or "/embeddings/" in out_name:
                inside.append(f"{name} {out_name}")
    return {
        "ops": {k: dict(sorted(v.items())) for k, v in sorted(by_op.items())},
        "float_ops": dict(sorted(float_ops.items())),
        "encoder_float_ops": inside,
    }


def single_op_model(model: Any, sg: Any, op: Any) -> bytes:
    """A flatbuffer whose one subgraph is `op` of subgraph `sg` of `model` (a schema `ModelT` with its
    buffers inline, `inline_model`) alone: its constant inputs as buffers, its other inputs as the
    subgraph's inputs, its outputs as outputs (same tensors, types and quantization)."""
    import copy

    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    used = [t for t in dict.fromkeys([*op.inputs, *op.outputs]) if t >= 0]
    remap = {t: i for i, t in enumerate(used)}
    buffers, tensors, inputs = [schema.BufferT()], [], []
    for t in used:
        tensor = copy.copy(sg.tensors[t])
        data = model.buffers[tensor.buffer].data if tensor.buffer else None
        if data is not None and len(data):
            buffers.append(model.buffers[tensor.buffer])
            tensor.buffer = len(buffers) - 1
        else:
            tensor.buffer = 0
            if t in op.inputs:
                inputs.append(remap[t])
        tensors.append(tensor)
    one = copy.copy(op)
    one.opcodeIndex, one.intermediates = 0, None
    one.inputs = np.asarray([remap.get(t, -1) for t in op.inputs], np.int32)
    one.outputs = np.asarray([remap[t] for t in op.outputs], np.int32)
    sub = schema.SubGraphT()
    sub.tensors, sub.operators = tensors, [one]
    sub.inputs, sub.outputs = np.asarray(inputs, np.int32), one.outputs
    out = schema.ModelT()
    out.version, out.description = 3, "one op"
    out.operatorCodes, out.subgraphs, out.buffers = [model.operatorCodes[op.opcodeIndex]], [sub], buffers
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(out.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@functools.cache
def _op_names() -> dict[int, str]:
    """LiteRT's builtin operator codes -> names (schema `BuiltinOperator`)."""
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def op_type(model: Any, op: Any) -> str:
    """The builtin operator name of `op` (schema object API) in `model`."""
    code = model.operatorCodes[op.opcodeIndex]
    return _op_names().get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")


def cpu_delegate_audit(path: str) -> dict[str, Any]:
    """Which ops of the first subgraph of the `.tflite` at `path` ai-edge-litert's default CPU delegate
    (XNNPACK) takes: each op is cut out into a file of its own (`single_op_model`) and loaded; a taken
    op adds the delegate's node. Returns `not_taken` ({op type: count}) and `partitions` (the delegate
    nodes of the whole file: the graph runs as that many XNNPACK partitions with the ops not taken
    between them, in TFLite's builtin kernels)."""
    from ai_edge_litert.interpreter import Interpreter

    with open(path, "rb") as f:
        model = inline_model(f.read())
    sg = model.subgraphs[0]
    not_taken: dict[str, int] = {}
    for op in sg.operators or []:
        interp = Interpreter(model_content=single_op_model(model, sg, op), num_threads=1)
        interp.allocate_tensors()  # the default delegate is applied here
        if len(interp._get_ops_details()) == 1:  # private API: the node list, delegate nodes included
            name = op_type(model, op)
            not_taken[name] = not_taken.get(name, 0) + 1
    whole = Interpreter(model_path=path, num_threads=1)
    whole.allocate_tensors()
    partitions = sum(1 for n in whole._get_ops_details() if n["op_name"] == "DELEGATE")
    return {"delegate": "XNNPACK", "not_taken": dict(sorted(not_taken.items())), "partitions": partitions}


# ---------------------------------------------------------------------------------------------------
# QAT for the full-integer graph (`finetune --qat int8-full`)
# ---------------------------------------------------------------------------------------------------
# What the full-integer file quantizes, and so what this fake quantization does (int8, straight-through
# gradients; activations asymmetric per tensor, their range the batch's min/max widened to hold 0):
# every dense layer's weights (symmetric, one scale per output channel) and output (after the fused
# ReLU of the intermediate layers; a NoNorm without a residual folds into its dense layer, whose output
# is then the norm's), each residual add and each NoNorm's product and sum, the attention's first
# matmul and its masked scores (the first matmul's output a range of its own; the masked scores its
# range widened down by MASK_FILL_MARGIN, as `cpu_ready_ranges` sets them), the keys and values on a
# zero-point-free range (`cpu_ready_ranges` too), the softmax (the int8 SOFTMAX's fixed grid: 1/256, zero point -128), the
# attention context, the pooler's tanh (fixed grid 1/128), the logits, the word and token-type tables
# (int8 on each table's range, `_fq_table`), the position rows (one range over the L rows the graph
# holds) and the two embedding sums. Reshapes, transposes, the trigram's pads and concatenation and
# the padding SELECTs keep their input's grid: nothing to round.


def _fq_grid(
    x: Any, scale: Any, zero_point: Any, observe: Callable | None = None, rounding: bool = True
) -> Any:
    """x rounded to the int8 grid `(q - zero_point) * scale`, q in [-128, 127]; the gradient passes
    straight through (`rounding=False`: x as it is). `observe(scale, zero_point)` sees each grid (eager calls: the test compares them
    with the file's)."""
    import jax
    import jax.numpy as jnp

    if observe is not None:
        observe(scale, zero_point)
    if not rounding:  # observe-only: the float forward's grids (what calibration sees)
        return x

    q = jnp.clip(jnp.round(x / scale) + zero_point, -128.0, 127.0)
    return x + jax.lax.stop_gradient((q - zero_point) * scale - x)


class RangeBook:
    """Where the fake quantization's activation ranges come from, one per quantized activation in the
    order the forward computes them: `fixed` (static ranges, calibrated before training as the export
    calibrates the file: `calibrate_full_integer_ranges`) replaces each batch's own min/max;
    `record` (a list) collects each batch's (min, max) (calibration). Neither: each batch's own."""

    def __init__(self, fixed: Sequence[tuple[Any, Any]] | None = None, record: list | None = None):
        self.fixed, self.record, self.count = fixed, record, 0

    def __call__(self, lo: Any, hi: Any) -> tuple[Any, Any]:
        i, self.count = self.count, self.count + 1
        if self.record is not None:
            self.record.append((lo, hi))
        if self.fixed is None:
            return lo, hi
        if i >= len(self.fixed):
            raise ValueError(f"{len(self.fixed)} calibrated ranges for a forward with more activations")
        return self.fixed[i]


def _fq_range(
    x: Any,
    lo: Any,
    hi: Any,
    observe: Callable | None = None,
    rounding: bool = True,
    book: RangeBook | None = None,
) -> Any:
    """x on the asymmetric int8 grid of [lo, hi] (or `book`'s range for it) widened to hold 0 (as a
    zero point must)."""
    import jax
    import jax.numpy as jnp

    if book is not None:
        lo, hi = book(lo, hi)
    lo = jax.lax.stop_gradient(jnp.minimum(lo, 0.0))
    hi = jax.lax.stop_gradient(jnp.maximum(hi, 0.0))
    scale = jnp.maximum((hi - lo) / 255.0, 1e-30)
    return _fq_grid(x, scale, jnp.round(-128.0 - lo / scale), observe, rounding)


def _fq_act(
    x: Any, observe: Callable | None = None, rounding: bool = True, book: RangeBook | None = None
) -> Any:
    """An activation fake-quantized with its batch's range (one per tensor), or `book`'s."""
    import jax.numpy as jnp

    x = x.astype(jnp.float32)
    return _fq_range(x, jnp.min(x), jnp.max(x), observe, rounding, book)


def _fq_zero_point_free(
    x: Any, observe: Callable | None = None, rounding: bool = True, book: RangeBook | None = None
) -> Any:
    """An activation on the range [-128/127 M, M], M its batch's largest |value| (zero point 0), as
    `cpu_ready_ranges` gives the second operand of every attention matmul."""
    import jax.numpy as jnp

    x = x.astype(jnp.float32)
    m = jnp.max(jnp.abs(x))
    if book is not None:  # the calibrated M (the range's high end)
        m = book(-m * 128.0 / 127.0, m)[1]
    return _fq_range(x, -m * 128.0 / 127.0, m, observe, rounding)


def _fq_weight(w: Any) -> Any:
    """A dense kernel [in, out] fake-quantized symmetric int8, one scale per output channel."""
    import jax
    import jax.numpy as jnp

    scale = jax.lax.stop_gradient(jnp.max(jnp.abs(w), axis=0, keepdims=True) / 127.0)
    scale = jnp.where(scale > 0, scale, 1.0)
    return w + jax.lax.stop_gradient(jnp.clip(jnp.round(w / scale), -127, 127) * scale - w)


def _fq_table(table: Any, observe: Callable | None = None, rounding: bool = True) -> Any:
    """An embedding table as the full-integer graph gathers it: int8 on its own range, one per table."""
    return _fq_range(table, table.min(), table.max(), observe, rounding)


def _fq_dense(m: Any, x: Any, rounding: bool = True) -> Any:
    """`nn.Dense` m on x with its kernel fake-quantized (`_fq_weight`; `rounding=False`: float)."""
    import flax.linen as nn
    import jax

    p = nn.unbox(m.variables["params"])
    dims = (((x.ndim - 1,), (0,)), ((), ()))
    kernel = _fq_weight(p["kernel"]) if rounding else p["kernel"]
    y = jax.lax.dot_general(x, kernel, dims, precision=m.precision)
    return y + p["bias"] if "bias" in p else y


def _fq_nonorm(m: Any, call: Callable, x: Any, folded: bool, act: Callable) -> Any:
    """NoNorm m (`call`: its forward) on x. Folded into the dense layer before it (no residual): one
    output tensor. Else the residual add (its input), the product and the sum are three int8 tensors."""
    if folded:
        return act(call(x))
    import flax.linen as nn

    p = nn.unbox(m.variables["params"])
    return act(act(act(x) * p["weight"]) + p["bias"])


def full_integer_fake_quant(
    observe: Callable | None = None, rounding: bool = True, book: RangeBook | None = None
) -> Callable:
    """A flax method interceptor (`with nn.intercept_methods(...)`) that fake-quantizes, in the
    "integer" attention's forward (`full_integer_qat_model`), the tensors `--quantize int8-full`
    quantizes (see above); `observe(scale, zero_point)` sees each activation grid; `rounding=False`
    only observes (the grids of the float forward, which the export's calibration sees). `book`: the
    activations' ranges (`RangeBook`; default each batch's own); the embedding tables and position
    rows, constants in the file, keep their own."""
    import functools

    import flax.linen as nn
    import jax.numpy as jnp

    from mobilebert_jax.model.encoder import MobileBertPooler
    from mobilebert_jax.model.layers import (
        DenseNorm,
        MobileBertEmbeddings,
        MobileBertIntermediate,
        MobileBertSelfAttention,
        NoNorm,
    )

    act = functools.partial(_fq_act, observe=observe, rounding=rounding, book=book)
    constant = functools.partial(_fq_act, observe=observe, rounding=rounding)
    folded: list[bool] = []  # per DenseNorm being called: True without a residual

    def intercept(next_fun, args, kwargs, context):
        m, method = context.module, context.method_name
        if isinstance(m, DenseNorm) and method == "__call__":
            folded.append((args[1] if len(args) > 1 else kwargs.get("residual")) is None)
            try:
                return next_fun(*args, **kwargs)
            finally:
                folded.pop()
        in_fold = isinstance(m.parent, DenseNorm) and folded[-1]
        if isinstance(m, nn.Dense) and method == "__call__":
            y = _fq_dense(m, args[0] if args else kwargs["inputs"], rounding)
            if isinstance(m.parent, MobileBertSelfAttention) and m.name in ("key", "value"):
                return _fq_zero_point_free(
                    y, observe, rounding, book
                )  # second operand of an attention matmul
            if isinstance(m.parent, MobileBertSelfAttention) and m.name == "query":
                # the "integer" attention scales the query after this layer; the converter folds the
                # scaling into its weights, so the file rounds the scaled query
                c = (y.shape[-1] // m.parent.config.num_attention_heads) ** -0.5
                return act(y * c) / c
            return y if in_fold or isinstance(m.parent, MobileBertIntermediate) else act(y)
        if isinstance(m, NoNorm) and method == "__call__":
            return _fq_nonorm(m, next_fun, args[0] if args else kwargs["x"], in_fold, act)
        if isinstance(m, nn.Embed) and method == "__call__" and isinstance(m.parent, MobileBertEmbeddings):
            if m.name == "position_embeddings":  # constant ids: the graph holds the L rows, one range
                return constant(next_fun(*args, **kwargs))
            ids = args[0] if args else kwargs["inputs"]
            table = _fq_table(
                jnp.asarray(nn.unbox(m.variables["params"])["embedding"], jnp.float32), observe, rounding
            )
            return jnp.take(table, ids, axis=0).astype(m.dtype)
        if isinstance(m, MobileBertEmbeddings) and method == "_sum":
            x, pos, typ = args
            return act(act(x.astype(jnp.float32) + pos) + typ)
        if isinstance(m, MobileBertIntermediate) and method == "__call__":
            return act(next_fun(*args, **kwargs))
        if isinstance(m, MobileBertSelfAttention) and method == "_integer_matmul":
            return act(next_fun(*args, **kwargs))  # the first matmul's output: a range of its own
        if isinstance(m, MobileBertSelfAttention) and method == "_integer_scores":
            # the masked scores: the range of the scores widened down by MASK_FILL_MARGIN (the file's
            # `cpu_ready_ranges`); padded keys' -64 rounds to its low end
            q, k, mask_bias = (list(args) + [kwargs.get("mask_bias")])[:3]
            scores = m._integer_matmul(q, k)
            if mask_bias is None:
                return scores
            lo, hi = (
                book(jnp.min(scores), jnp.max(scores))
                if book is not None
                else (jnp.min(scores), jnp.max(scores))
            )
            return _fq_range(scores + mask_bias, lo - MASK_FILL_MARGIN, hi, observe, rounding)
        if isinstance(m, MobileBertSelfAttention) and method == "_integer_softmax":
            return _fq_grid(next_fun(*args, **kwargs), 1.0 / 256.0, -128.0, observe, rounding)
        if isinstance(m, MobileBertSelfAttention) and method == "__call__":
            ctx, probs = next_fun(*args, **kwargs)
            return act(ctx), probs
        if isinstance(m, MobileBertPooler) and method == "__call__" and m.config.classifier_activation:
            return _fq_grid(next_fun(*args, **kwargs), 1.0 / 128.0, 0.0, observe, rounding)
        return next_fun(*args, **kwargs)

    return intercept


def full_integer_qat_model(model: Any) -> Any:
    """The model `finetune --qat int8-full` trains: the graph the full-integer export converts (the
    "integer" attention, `common.device_graph`); run it under `full_integer_fake_quant`."""
    from mobilebert_jax.export.common import device_graph

    return device_graph(model).clone(attention_implementation="integer")


def with_full_integer_fake_quant(fn: Callable, ranges: Sequence[tuple[Any, Any]] | None = None) -> Callable:
    """`fn` (a loss or forward of a `full_integer_qat_model`) traced under `full_integer_fake_quant`;
    `ranges`: static activation ranges (`calibrate_full_integer_ranges`), else each batch's own."""
    import flax.linen as nn

    def wrapped(*args, **kwargs):
        book = RangeBook(fixed=ranges) if ranges is not None else None
        with nn.intercept_methods(full_integer_fake_quant(book=book)):
            return fn(*args, **kwargs)

    return wrapped


def calibrate_full_integer_ranges(
    forward: Callable, params: Any, batches: Iterable[dict[str, np.ndarray]]
) -> list[tuple[float, float]]:
    """The static activation ranges of the full-integer graph: min and max of each activation the
    fake quantization rounds, over `batches` through the float `forward(params, **batch)` of a
    `full_integer_qat_model` (as the export calibrates the file: min/max over its calibration text)."""
    import flax.linen as nn
    import jax

    def observed(p: Any, batch: dict[str, Any]) -> list:
        seen: list = []
        with nn.intercept_methods(full_integer_fake_quant(rounding=False, book=RangeBook(record=seen))):
            forward(p, **batch)
        return seen

    step = jax.jit(observed)
    lo = hi = None
    for batch in batches:
        seen = jax.device_get(step(params, batch))
        pairs = np.asarray([[float(a), float(b)] for a, b in seen])
        lo = pairs[:, 0] if lo is None else np.minimum(lo, pairs[:, 0])
        hi = pairs[:, 1] if hi is None else np.maximum(hi, pairs[:, 1])
    if lo is None:
        raise ValueError("no calibration batches")
    return [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]


def _full_integer_record() -> list[list]:
    return [[r, op, bits] for r, op, bits in FULL_INT_RECIPE]


def save_full_integer_qat_record(folder: str, info: dict[str, Any]) -> str:
    """Writes FOLDER/quant_stats.json for a model `finetune --qat int8-full` trained: the recipe it was
    trained for and no ranges (`export --quantize int8-full` calibrates on text, min/max of the trained
    model's tensors)."""
    import json

    path = os.path.join(folder, "quant_stats.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**info, "qat": "int8-full", "rules": _full_integer_record()}, f, indent=2)
        f.write("\n")
    return path


def full_integer_qat_info(folder: str) -> dict[str, Any] | None:
    """The record `save_full_integer_qat_record` left in FOLDER, or None (no `--qat int8-full` model).

    Raises ExportError where it was trained for another full-integer recipe than this version's."""
    import json

    path = os.path.join(folder, "quant_stats.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("qat") != "int8-full":
        return None
    if info.get("rules") != _full_integer_record():
        from mobilebert_jax.export.common import ExportError

        raise ExportError(
            f"{path}: the model was trained (--qat int8-full) for another full-integer recipe "
            f"({info.get('rules')}) than this version's {_full_integer_record()}: run finetune --qat "
            "int8-full again, or delete the file to quantize it post-training"
        )
    return info
