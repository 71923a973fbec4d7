"""lmim.benchmark: the in-process matmul peak, the matmul FLOPs read from a compiled program, the
phase of each executed op, and the report on a tiny Latent MIM step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmim import benchmark
from lmim.errors import FlagError
from tiny import tiny_config


def test_matmul_flops_are_read_from_the_compiled_program():
  """Forward and backward of x·w·v: 2 matmuls forward, 3 in the gradient w.r.t. w and v (the
  input's gradient is not asked for), each 2·m·k·n FLOPs; elementwise work counts nothing."""
  m, k, n = 64, 96, 48

  def f(w, v, x):
    with jax.named_scope("decoder"):
      h = jnp.tanh(x @ w)
    with jax.named_scope("loss"):
      return jnp.sum((h @ v) ** 2)
  args = (jnp.ones((k, n)), jnp.ones((n, 32)), jnp.ones((m, k)))
  hlo = jax.jit(jax.grad(f, argnums=(0, 1))).lower(*args).compile().as_text()
  ops = benchmark.parse_hlo(hlo)
  total = sum(flops for _, flops in ops.values())
  expected = 2 * (m * k * n + m * n * 32) + 2 * (m * n * 32 + m * 32 * n + k * m * n)
  assert total == expected
  by_phase = {}
  for names, flops in ops.values():
    by_phase[benchmark.phase_of(names)] = by_phase.get(benchmark.phase_of(names), 0) + flops
  assert by_phase.get("decoder forward", 0) == 2 * m * k * n
  assert by_phase.get("decoder backward", 0) == 2 * k * m * n           # dL/dw = xᵀ·(dL/dh ⊙ tanh')


def test_the_steps_matmuls_are_listed_with_their_physical_layouts():
  """The same x·w·v gradient: step_dots finds the 5 matmuls, their FLOPs are parse_hlo's, and each
  listed matmul, rebuilt in row-major arrays, has the output shape of the one in the program."""
  m, k, n = 64, 96, 48

  def f(w, v, x):
    return jnp.sum((jnp.tanh(x @ w) @ v) ** 2)
  args = (jnp.ones((k, n)), jnp.ones((n, 32)), jnp.ones((m, k)))
  hlo = jax.jit(jax.grad(f, argnums=(0, 1))).lower(*args).compile().as_text()
  dots = benchmark.step_dots(hlo)
  assert sum(dots.values()) == 5
  assert sum(benchmark.dot_flops(key) * c for key, c in dots.items()) == sum(
      f for _, f in benchmark.parse_hlo(hlo).values())
  sizes = sorted(int(np.prod(jax.eval_shape(lambda a, b, key=key: jax.lax.dot_general(
      a, b, ((key[2], key[3]), (key[4], key[5]))), jax.ShapeDtypeStruct(key[0], jnp.float32),
      jax.ShapeDtypeStruct(key[1], jnp.float32)).shape)) for key in dots for _ in range(dots[key]))
  assert sizes == sorted([m * n, m * 32, m * n, n * 32, k * n])   # forward 2; dv, dh, dw
  # A column-major operand ({0,1}: dim 0 minor) is the row-major transpose, contracting dim moved.
  text = """%fused (p0: f32[4,6], p1: f32[6,5]) -> f32[4,5] {
  %p0 = f32[4,6]{0,1} parameter(0)
  %p1 = f32[6,5]{1,0} parameter(1)
  ROOT %d = f32[4,5]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}"""
  assert benchmark.step_dots(text) == {((6, 4), (6, 5), (0,), (0,), (), ()): 1}


def test_each_matmul_shape_keeps_its_best_time_over_the_passes(monkeypatch):
  """One shape timed once moves by up to 1.8x between runs: dots_alone times the whole list in
  several passes and keeps each shape's best; the shapes come back largest share first."""
  def f(w, v, x):
    return jnp.sum((jnp.tanh(x @ w) @ v) ** 2)
  hlo = jax.jit(jax.grad(f, argnums=(0, 1))).lower(jnp.ones((96, 48)), jnp.ones((48, 32)),
                                                   jnp.ones((64, 96))).compile().as_text()
  calls = []

  def fake_time(key, dtype="float32"):
    calls.append(key)
    return {0: 2e-3, 1: 1e-3, 2: 3e-3}[(len(calls) - 1) // len(benchmark.step_dots(hlo))] * key[0][0]
  monkeypatch.setattr(benchmark, "time_dot", fake_time)
  d = benchmark.dots_alone(hlo, passes=3)
  dots = benchmark.step_dots(hlo)
  assert len(calls) == 3 * len(dots)
  assert d["seconds"] == pytest.approx(sum(1e-3 * k[0][0] * n for k, n in dots.items()))
  assert sum(x["count"] for x in d["shapes"]) == d["count"] == 5
  assert [x["seconds"] for x in d["shapes"]] == sorted((x["seconds"] for x in d["shapes"]), reverse=True)


def test_each_op_goes_to_its_phase():
  p = benchmark.phase_of
  assert p(["jit(update)/jvp(target_encoder)/Encoder/blocks_0/mlp/fc1/dot_general"]) == "target_encoder"
  assert p(["jit(update)/jvp(online_encoder)/Encoder/head/linear0/dot_general"]) == "projector forward"
  assert p(["jit(update)/transpose(jvp(online_encoder))/Encoder/blocks_0/attn"]) == "online_encoder backward"
  assert p(["jit(update)/transpose(jvp(decoder))/x", "jit(update)/transpose(jvp(decoder))/y",
            "jit(update)/jvp(loss)/z"]) == "decoder backward"                  # the majority
  assert p(["jit(update)/optimizer/mul"]) == "optimizer" and p(["jit(update)/ema_update/add"]) == "ema_update"
  assert p(["jit(update)/jvp(vmap())/threefry"]) == "other" and p([]) == "other"


def test_matmul_peak_counts_the_flops_of_its_chain(monkeypatch):
  """The peak is FLOPs of the chain over the measured time (time made exact here)."""
  clock = iter(np.arange(0.0, 100.0, 0.5))
  monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(clock))
  rates = benchmark.matmul_peak(size=64, chain=3, reps=2, devices=jax.devices()[:2])
  assert rates == [2 * 64 ** 3 * 3 * 2 / 0.5] * 2


@pytest.mark.slow
def test_benchmark_reports_achieved_over_peak_and_every_phase():
  r = benchmark.benchmark(tiny_config(), steps=2, warmup=1, devices=jax.devices()[:1])
  assert r["peak_fraction"] == pytest.approx(r["flops_per_s"] / r["peak_flops_per_s"])
  assert r["peak_range"][0] <= r["peak_flops_per_s"] <= r["peak_range"][1]
  assert r["best_fraction"] == pytest.approx(r["flops_per_step"] / r["step_s_range"][0] / r["peak_best_flops_per_s"])
  phases = r["phases"]
  for name in ("target_encoder", "online_encoder forward", "online_encoder backward", "projector forward",
               "decoder forward", "decoder backward", "loss forward", "optimizer", "ema_update"):
    assert phases.get(name, {}).get("seconds", 0) > 0, (name, sorted(phases))
  # Every matmul of the step is in a named phase: none is left to 'other' (views, draws, sums).
  assert phases.get("other", {}).get("matmul_flops", 0) == 0
  report = benchmark.format_report(r)
  assert "achieved/peak" in report and "decoder backward" in report


def test_paired_ratios_are_taken_step_by_step_not_between_medians():
  # Back-to-back pairs cancel a shared machine's drift; the ratio of the two medians would not
  # (here it is 0.3, the step-by-step median 1.0).
  t = benchmark.paired_ratios([1.0, 10.0, 10.0, 2.0], [3.0, 10.0, 1.0, 2.0])
  assert t["median"] == pytest.approx(1.0) and t["pairs"] == 4
  assert t["quartiles"] == pytest.approx((np.percentile([3, 1, 0.1, 1], 25), np.percentile([3, 1, 0.1, 1], 75)))


@pytest.mark.parametrize("flags, message", [
    ({"variant": "model.depth"}, "--variant='model.depth' is invalid: ';'-separated name=value pairs"),
    ({"variant": "model.nosuch=1"}, "--variant='model.nosuch=1' is invalid: each name an existing config field"),
    ({"variant": "model.decoder.depth=two"}, "--variant='model.decoder.depth=two' is invalid"),
    ({"xla_options": "cpu_thing=1"}, "--xla_options='cpu_thing' is invalid: XLA DebugOptions field names"),
    ({"xla_options": "xla_cpu_no_such_option=1"}, "No such compile option: 'xla_cpu_no_such_option'"),
    ({"xla_options": "xla_cpu_scheduler_type=SOMETIMES"}, "'SOMETIMES' is not a valid enum value"),
])
def test_a_bad_variant_is_one_line_before_anything_is_built(monkeypatch, flags, message):
  def no_build(*a, **k):
    raise AssertionError("built before the variant was checked")
  monkeypatch.setattr(benchmark.train, "build", no_build)
  with pytest.raises(FlagError) as e:
    benchmark.benchmark(tiny_config(), steps=1, warmup=0, devices=jax.devices()[:1], **flags)
  assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_a_variant_alternates_with_the_step_and_reports_the_paired_ratio():
  """A variant with a deeper decoder: its own compile (more FLOPs), one time per timed step,
  paired with the step's; XLA options alone compile the same step another way (same FLOPs)."""
  r = benchmark.benchmark(tiny_config(), steps=3, warmup=1, devices=jax.devices()[:1], peak=False, phases=False,
                          variant="model.decoder.depth=3")
  v = r["variant"]
  assert v["overrides"] == {"model.decoder.depth": 3} and v["time_ratio"]["pairs"] == 3
  assert v["flops_per_step"] > 1.2 * r["flops_per_step"]
  report = benchmark.format_report(r)
  assert "variant (model.decoder.depth=3)" in report and "variant time / step time" in report
  r = benchmark.benchmark(tiny_config(), steps=2, warmup=1, devices=jax.devices()[:1], peak=False, phases=False,
                          xla_options="xla_cpu_enable_fast_math=false")
  assert r["variant"]["xla_options"] == {"xla_cpu_enable_fast_math": False}
  assert r["variant"]["flops_per_step"] == r["flops_per_step"] and r["variant"]["time_ratio"]["pairs"] == 2
