"""Mesh construction, the logical-axis rule table and sharding helpers (CPU, 8 fake devices)."""

from __future__ import annotations

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from mobilebert_jax import MobileBertConfig, MobileBertForPreTraining
from mobilebert_jax.training import sharding as shd
from mobilebert_jax.training import state as ts
from mobilebert_jax.training.optim import path_str

needs8 = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
)


@needs8
def test_make_mesh_sizes_and_auto_axes():
    m = shd.make_mesh(data=-1, fsdp=2)
    assert dict(m.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert m.axis_names == shd.MESH_AXES
    assert all(t == AxisType.Auto for t in m.axis_types)
    assert dict(shd.make_mesh(data=2, tensor=-1).shape) == {"data": 2, "fsdp": 1, "tensor": 4}
    assert dict(shd.make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="at most one"):
        shd.make_mesh(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="not divisible"):
        shd.make_mesh(data=-1, fsdp=3)
    with pytest.raises(ValueError, match="needs 16 devices, 8 available"):
        shd.make_mesh(data=4, fsdp=4)
    with pytest.raises(ValueError, match="positive or -1"):
        shd.make_mesh(data=0)


@needs8
def test_logical_constraints_need_auto_axes():
    """Linen's logical constraints shard on our (Auto) mesh; on an Explicit mesh they assert instead."""

    def f(x):
        return nn.with_logical_constraint(x * 2, ("batch", None))

    x = jnp.ones((8, 4))
    rules = shd.logical_rules("dp")
    mesh = shd.make_mesh()
    with shd.mesh_context(mesh, rules):
        y = jax.jit(f)(x)
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None)), 2)
    assert len({str(s.index) for s in y.addressable_shards}) == 8
    explicit = jax.make_mesh((8, 1, 1), shd.MESH_AXES, axis_types=(AxisType.Explicit,) * 3)
    with pytest.raises(AssertionError, match="Explicit"):
        with jax.set_mesh(explicit), nn.logical_axis_rules(rules):
            jax.jit(f)(x)


def test_rule_table():
    assert set(shd.RULES) == {"dp", "fsdp", "tensor", "fsdp_tensor"}
    for rules in shd.RULES.values():
        assert rules[0] == ("batch", ("data", "fsdp"))  # batch first: activations never reuse fsdp
    spec = lambda names, kind: nn.logical_to_mesh_axes(names, shd.RULES[kind])  # noqa: E731
    # default: params replicated
    assert spec(("bottleneck", "mlp"), "dp") == P(None, None)
    # FSDP: the widest dim; an activation keeps fsdp on its batch dim only
    assert spec(("bottleneck", "mlp"), "fsdp") == P(None, "fsdp")
    assert spec(("vocab", "word_embed"), "fsdp") == P("fsdp", None)
    assert spec(("embed", "heads"), "fsdp") == P(None, "fsdp")
    assert spec(("embed",), "fsdp") == P(None)
    assert spec(("batch", "length", "embed"), "fsdp") == P(("data", "fsdp"), None, None)
    # tensor parallel: heads / mlp / vocab over "tensor", everything else replicated
    assert spec(("bottleneck", "heads"), "tensor") == P(None, "tensor")
    assert spec(("heads", "bottleneck"), "tensor") == P("tensor", None)
    assert spec(("mlp", "bottleneck"), "tensor") == P("tensor", None)
    assert spec(("embed",), "tensor") == P(None)
    assert spec(("batch", "length", "vocab"), "tensor") == P(("data", "fsdp"), None, "tensor")
    with pytest.raises(ValueError, match="unknown sharding rules 'zero3'"):
        shd.logical_rules("zero3")


@needs8
def test_rules_drop_axes_that_do_not_divide(caplog):
    cfg = MobileBertConfig()  # vocab 30522 = 2 * 15261: not divisible by tensor=4
    mesh = shd.make_mesh(data=2, tensor=4)
    with caplog.at_level(logging.WARNING):
        rules = shd.logical_rules("tensor", mesh, cfg)
    assert ("vocab", "tensor") not in rules and ("heads", "tensor") in rules and ("mlp", "tensor") in rules
    assert "vocab=30522" in caplog.text
    assert ("vocab", "tensor") in shd.logical_rules("tensor", shd.make_mesh(data=4, tensor=2), cfg)


@needs8
def test_model_param_shardings_from_rules(caplog):
    """The real model's annotations map to the shardings the rules say (eval_shape only, no FLOPs)."""
    cfg = MobileBertConfig.from_preset("mobilebert-test")
    init = ts.model_init_fn(MobileBertForPreTraining(cfg), {"input_ids": np.ones((2, 8), np.int32)})
    boxed = jax.eval_shape(init, jax.random.key(0))
    logical = nn.get_partition_spec(boxed)["params"]
    shapes = nn.meta.unbox(boxed)["params"]
    mesh = shd.make_mesh(data=4, fsdp=2)
    out = shd.logical_to_sharding(logical, shapes, mesh, shd.logical_rules("fsdp", mesh, cfg))
    flat = {path_str(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(out)}
    lay = "mobilebert/encoder/layer/1/"
    assert flat["mobilebert/embeddings/word_embeddings/embedding"] == P("fsdp", None)
    assert flat[lay + "intermediate/dense/kernel"] == P(None, "fsdp")
    assert flat[lay + "attention/self/query/kernel"] == P(None, "fsdp")
    assert flat[lay + "output/bottleneck/dense/kernel"] == P("fsdp", None)  # (bottleneck, embed)
    assert flat["mobilebert/embeddings/position_embeddings/embedding"] == P(None, None)  # (None, embed)
    assert flat[lay + "output/LayerNorm/weight"] == P("fsdp")
    assert flat["cls/predictions/dense/weight"] == P(None, "fsdp")
    mesh_t = shd.make_mesh(data=2, tensor=4)
    out = shd.logical_to_sharding(logical, shapes, mesh_t, shd.logical_rules("tensor", mesh_t, cfg))
    flat = {path_str(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(out)}
    assert flat[lay + "attention/self/value/kernel"] == P(None, "tensor")
    assert flat[lay + "attention/output/dense/kernel"] == P("tensor", None)
    assert flat[lay + "ffn/0/intermediate/dense/bias"] == P("tensor")
    assert flat[lay + "bottleneck/input/dense/kernel"] == P(None, None)
    assert flat["mobilebert/embeddings/word_embeddings/embedding"] == P("tensor", None)
    assert all(isinstance(s, NamedSharding) for s in jax.tree.leaves(out))


@needs8
def test_indivisible_dims_fall_back_to_replication_with_one_warning(caplog):
    mesh = shd.make_mesh(data=2, tensor=4)
    logical = {"a": P("vocab", None), "b": P("mlp"), "c": P("mlp")}
    shapes = {
        "a": jax.ShapeDtypeStruct((30, 4), jnp.float32),
        "b": jax.ShapeDtypeStruct((6,), jnp.float32),
        "c": jax.ShapeDtypeStruct((8,), jnp.float32),
    }
    shd._warned.clear()
    with caplog.at_level(logging.WARNING):
        out = shd.logical_to_sharding(logical, shapes, mesh, shd.RULES["tensor"])
        shd.logical_to_sharding(logical, shapes, mesh, shd.RULES["tensor"])
    assert out["a"].spec == P(None, None) and out["b"].spec == P(None) and out["c"].spec == P("tensor")
    warnings = [r for r in caplog.records if "not divisible" in r.getMessage()]
    assert len(warnings) == 1 and "['a'] dim 0 (30 over tensor)" in warnings[0].getMessage()


def test_no_mesh_is_a_no_op():
    shapes = {"w": jax.ShapeDtypeStruct((4, 4), jnp.float32)}
    assert shd.logical_to_sharding({"w": P("mlp", None)}, shapes, None) == {"w": None}
    assert shd.batch_sharding(None) is None and shd.replicated(None) is None
    with shd.mesh_context(None):
        y = jax.jit(lambda x: nn.with_logical_constraint(x, ("batch", None)))(jnp.ones((2, 2)))
    assert y.shape == (2, 2)
    b = shd.make_global_batch({"input_ids": np.ones((2, 3), np.int32)}, None)
    assert isinstance(b["input_ids"], jax.Array)
    assert shd.host_slice(8) == slice(0, 8)


def test_host_rows_are_this_process_share(monkeypatch):
    batch = {"x": np.arange(8), "y": np.arange(8) * 2}
    assert all(np.array_equal(v, batch[k]) for k, v in shd.host_rows(batch).items())
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    rows = shd.host_rows(batch)
    np.testing.assert_array_equal(rows["x"], [4, 5, 6, 7])
    np.testing.assert_array_equal(rows["y"], [8, 10, 12, 14])
    with pytest.raises(ValueError, match="different leading dims"):
        shd.host_rows({"x": np.arange(8), "y": np.arange(6)})
    with pytest.raises(ValueError, match="global batch size 7 is not divisible by 2 processes"):
        shd.host_rows({"x": np.arange(7)})


@needs8
def test_make_global_batch_shards_rows():
    mesh = shd.make_mesh(data=4, fsdp=2)
    x = np.arange(16 * 3).reshape(16, 3)
    b = shd.make_global_batch({"x": x, "y": np.arange(16)}, shd.batch_sharding(mesh))
    assert b["x"].sharding.spec == P(("data", "fsdp"))
    assert b["x"].addressable_shards[1].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(b["x"]), x)
    with pytest.raises(
        ValueError, match=r"batch\['x'\] global batch size 12 is not divisible by the data x fsdp mesh size 8"
    ):
        shd.make_global_batch({"x": x[:12]}, shd.batch_sharding(mesh))
    with pytest.raises(ValueError, match="scalar"):
        shd.make_global_batch({"x": np.float32(1)}, shd.batch_sharding(mesh))


def test_distributed_is_opt_in(monkeypatch):
    called = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: called.append(kw))
    monkeypatch.delenv(shd.DISTRIBUTED_ENV, raising=False)
    assert shd.maybe_initialize_distributed() is False and not called
    monkeypatch.setenv(shd.DISTRIBUTED_ENV, "1")
    for k in (shd.COORDINATOR_ENV, shd.NUM_PROCESSES_ENV, shd.PROCESS_ID_ENV):
        monkeypatch.delenv(k, raising=False)
    assert shd.maybe_initialize_distributed(coordinator_address="h:1234") is True
    assert called == [{"coordinator_address": "h:1234", "num_processes": None, "process_id": None}]
    assert shd.maybe_initialize_distributed(False) is False
    # the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), flags override it
    monkeypatch.setenv(shd.COORDINATOR_ENV, "h0:99")
    monkeypatch.setenv(shd.NUM_PROCESSES_ENV, "4")
    monkeypatch.setenv(shd.PROCESS_ID_ENV, "3")
    called.clear()
    shd.maybe_initialize_distributed()
    shd.maybe_initialize_distributed(process_id=1)
    assert called == [
        {"coordinator_address": "h0:99", "num_processes": 4, "process_id": 3},
        {"coordinator_address": "h0:99", "num_processes": 4, "process_id": 1},
    ]
    with pytest.raises(ValueError, match=r"process id 4 is not in \[0, 4\)"):
        shd.maybe_initialize_distributed(process_id=4)
    monkeypatch.setenv(shd.NUM_PROCESSES_ENV, "four")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='four' is not an integer"):
        shd.maybe_initialize_distributed()
    # the command line: the address flags imply --distributed (without the env var)
    from mobilebert_jax.cli.main import build_parser

    monkeypatch.delenv(shd.DISTRIBUTED_ENV)
    for k in (shd.COORDINATOR_ENV, shd.NUM_PROCESSES_ENV, shd.PROCESS_ID_ENV):
        monkeypatch.delenv(k)
    from mobilebert_jax.cli.distributed import initialize_distributed

    called.clear()
    args = build_parser().parse_args(
        ["finetune", "--coordinator-address=127.0.0.1:5", "--num-processes=2", "--process-id=1"]
    )
    assert initialize_distributed(args) is True
    assert initialize_distributed(build_parser().parse_args(["finetune"])) is False
    assert called == [{"coordinator_address": "127.0.0.1:5", "num_processes": 2, "process_id": 1}]
