"""Device mesh and shardings: the one module that knows how arrays are laid out.

Mesh axes are ('data', 'fsdp'). The batch is split over both axes (every device holds a slice
of the examples). Parameters, EMA parameters and optimiser moments above a size threshold are
split FSDP-style along their largest dimension divisible by the fsdp size (ZeRO-3 in effect: XLA
all-gathers a weight where it is used and reduce-scatters its gradient); small ones are
replicated. With fsdp = 1 this is plain data parallelism; the same code runs on 1 CPU device,
on 8 virtual devices and on a TPU pod.
"""
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lmim.errors import ConfigError

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: all), sizes from the config.

  Auto axis types: `jax.make_mesh` now defaults to Explicit axes, under which sharding
  propagation becomes a type system; this code relies on GSPMD propagation.
  """
  devices = list(devices if devices is not None else jax.devices())
  data, fsdp = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2,
                       devices=devices)


def fsdp_spec(shape, itemsize: int, fsdp_size: int, min_size_mb: float) -> P:
  """Shard the largest dimension divisible by the fsdp axis, if the array is big enough."""
  if fsdp_size == 1 or math.prod(shape) * itemsize < min_size_mb * 2 ** 20:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(abstract_tree, mesh: Mesh, min_size_mb: float):
  """NamedShardings for a tree of ShapeDtypeStructs (params, EMA, optimiser state, scalars)."""
  fsdp = mesh.shape["fsdp"]

  def one(x):
    if not hasattr(x, "shape"):
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, fsdp_spec(x.shape, np.dtype(x.dtype).itemsize, fsdp, min_size_mb))
  return jax.tree.map(one, abstract_tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """Examples along `batch_axis` split over ('data', 'fsdp'); other axes whole."""
  return NamedSharding(mesh, P(*([None] * batch_axis), BATCH_AXES))


def global_batch(local: dict, mesh: Mesh, batch_axis: int = 0) -> dict:
  """Process-local numpy arrays -> global jax.Arrays sharded over the batch axes.

  Each process passes its own contiguous slice of the global batch; the global array is their
  concatenation in process order (how `lmim.data` assigns examples to processes).
  """
  sharding = batch_sharding(mesh, batch_axis)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def put_replicated(tree, mesh: Mesh):
  """Host values that are identical on every process -> arrays replicated over the whole mesh.

  `jax.device_put` onto a sharding that spans other processes' devices is refused in a
  multi-process job; each process supplies its own (identical) copy instead.
  """
  repl = replicated(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), repl, lambda _: np.asarray(x)),
                      jax.device_get(tree))


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes; one of them may be -1 = all remaining devices."""
  data, fsdp = mesh_cfg.data, mesh_cfg.fsdp
  if (data == -1) and (fsdp == -1):
    raise ConfigError("mesh", dict(data=data, fsdp=fsdp), "at most one axis may be -1")
  for name, v in (("data", data), ("fsdp", fsdp)):
    if v == 0 or v < -1:
      raise ConfigError(f"mesh.{name}", v, "a positive size or -1 (all remaining devices)")
  known = (data if data != -1 else 1) * (fsdp if fsdp != -1 else 1)
  if num_devices % known:
    raise ConfigError("mesh", dict(data=data, fsdp=fsdp),
                      f"the axes must multiply to the device count {num_devices}")
  if data == -1:
    data = num_devices // known
  if fsdp == -1:
    fsdp = num_devices // known
  if data * fsdp != num_devices:
    raise ConfigError("mesh", dict(data=data, fsdp=fsdp),
                      f"the axes multiply to {data * fsdp}, not to the device count {num_devices}")
  return data, fsdp
