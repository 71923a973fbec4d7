"""Fixed 2-D sin-cos position embeddings: Latent MIM's table (docs/latent_mim.md §6.2) and MAE's.

Two details of Latent MIM's table differ from MAE's and matter for parity with released checkpoints:
- cell (i, j) sits at continuous coordinates (u_i, v_j) = linspace(0, 1, g)·g, not at the
  integers 0..g-1 (the step is g/(g-1));
- the column (x) coordinate comes first: PE = [sin(vω), cos(vω), sin(uω), cos(uω)].
Row 0 belongs to CLS and is all zeros.

The table is computed in float32 with the same operation order as torch (including torch's
two-sided linspace), so it equals the official buffer bit for bit in practice.
MAE's table (`get_2d_sincos_pos_embed`) uses integer coordinates 0..g-1 and float64 frequencies,
also with the column coordinate in the first half; `style='mae'` selects it.
"""
import functools

import numpy as np


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
  """torch.linspace in float32: the first half counts up from start, the second down from end."""
  if steps == 1:
    return np.array([start], np.float32)
  step = (np.float32(end) - np.float32(start)) / np.float32(steps - 1)
  idx = np.arange(steps)
  half = steps // 2
  out = np.where(idx < half,
                 np.float32(start) + step * idx.astype(np.float32),
                 np.float32(end) - step * (steps - idx - 1).astype(np.float32))
  return out.astype(np.float32)


def _sincos_1d(pos: np.ndarray, width: int) -> np.ndarray:
  """(P,) float32 positions -> (P, width/2) [sin(pos·ω), cos(pos·ω)], ω_k = 10000^(-4k/width)."""
  omega = np.arange(width // 4, dtype=np.float32) / np.float32(width) * np.float32(4.0)
  omega = (np.float32(1.0) / np.power(np.float32(10000.0), omega)).astype(np.float32)
  out = pos[:, None].astype(np.float32) * omega[None, :]
  return np.concatenate([np.sin(out), np.cos(out)], axis=-1).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _table(width: int, grid_h: int, grid_w: int) -> np.ndarray:
  if width % 4:
    raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {width}")
  # Per axis: linspace(0, 1, g)·g, the official coordinates (a square grid in training; other
  # grids — a new resolution, DAVIS's 30×52 — use the same rule along each axis).
  lin_h = _torch_linspace_f32(0.0, 1.0, grid_h) * np.float32(grid_h)
  lin_w = _torch_linspace_f32(0.0, 1.0, grid_w) * np.float32(grid_w)
  rows, cols = np.meshgrid(lin_h, lin_w, indexing="ij")                   # pid = i*gw + j
  pe = np.concatenate([_sincos_1d(cols.reshape(-1), width),              # x (column) first
                       _sincos_1d(rows.reshape(-1), width)], axis=-1)
  table = np.zeros((grid_h * grid_w + 1, width), np.float32)              # row 0: CLS = 0
  table[1:] = pe
  table.setflags(write=False)
  return table


@functools.lru_cache(maxsize=None)
def _mae_table(width: int, grid_h: int, grid_w: int) -> np.ndarray:
  if width % 4:
    raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {width}")
  omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4.0))
  rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64),
                           indexing="ij")
  one = lambda pos: np.concatenate([np.sin(pos[:, None] * omega), np.cos(pos[:, None] * omega)], axis=1)
  table = np.zeros((grid_h * grid_w + 1, width), np.float32)
  table[1:] = np.concatenate([one(cols.reshape(-1)), one(rows.reshape(-1))], axis=1)
  table.setflags(write=False)
  return table


STYLES = ("lmim", "mae")


def sincos_table(width: int, grid_size: int, style: str = "lmim", grid_w: int | None = None) -> np.ndarray:
  """(1 + gh·gw, width) float32 table; row pid+1 embeds patch id pid = row·gw + col, row 0 is CLS.

  `grid_size` is the number of rows (and of columns unless `grid_w` is given).
  """
  gh, gw = int(grid_size), int(grid_w or grid_size)
  if style == "mae":
    return _mae_table(int(width), gh, gw)
  return _table(int(width), gh, gw)


def torch_bicubic_matrix(n_in: int, n_out: int, scale_factor: float | None = None) -> np.ndarray:
  """(n_out, n_in) weights of torch's 1-D bicubic resize (`F.interpolate(mode='bicubic',
  align_corners=False)`: Keys' kernel with a = -0.75, borders replicated). With `scale_factor`
  the source coordinate is (i + ½)/scale_factor − ½, as torch computes it when a scale factor
  rather than a size is passed (DINO passes one); otherwise the scale is n_out/n_in."""
  a = -0.75
  inner = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1          # |x| ≤ 1
  outer = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a    # 1 < |x| < 2
  step = 1.0 / scale_factor if scale_factor else n_in / n_out
  w = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    src = (i + 0.5) * step - 0.5
    x0 = int(np.floor(src))
    t = src - x0
    for k, coeff in enumerate((outer(t + 1), inner(t), inner(1 - t), outer(2 - t))):
      w[i, min(max(x0 - 1 + k, 0), n_in - 1)] += coeff
  return w


def interpolate_table(table, grid_size: int, grid: tuple[int, int]):
  """A trained (1 + g·g, D) table (row 0 = CLS) on another (gh, gw) grid, as DINO's
  `interpolate_pos_encoding` does: the g×g cells resized bicubically (torch's kernel) with scale
  factors (gh + 0.1)/g and (gw + 0.1)/g, so the new grid spans the coordinates the encoder was
  trained on; the training grid itself is returned unchanged."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  gh, gw = grid
  if (gh, gw) == (grid_size, grid_size):
    return table
  rows = jnp.asarray(torch_bicubic_matrix(grid_size, gh, (gh + 0.1) / grid_size), jnp.float32)
  cols = jnp.asarray(torch_bicubic_matrix(grid_size, gw, (gw + 0.1) / grid_size), jnp.float32)
  cells = table[1:].reshape(grid_size, grid_size, -1)
  cells = jnp.einsum("ai,bj,ijd->abd", rows, cols, cells, precision="highest")
  return jnp.concatenate([table[:1], cells.reshape(gh * gw, -1)], axis=0)
