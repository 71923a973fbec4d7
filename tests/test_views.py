"""Masking and gap-patchify invariants (docs/latent_mim.md §4, §5)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmim import views


def keys(n, seed=0):
  return views.example_keys(jax.random.key(seed), jnp.arange(n))


@pytest.mark.parametrize("grid,num_vis", [(14, 20), (6, 4), (3, 1)])
def test_visible_and_targets_partition_the_grid(grid, num_vis):
  shuffle, _ = views.draw_views(keys(16), grid_size=grid, gap=4)
  s = np.asarray(shuffle)
  assert s.shape == (16, grid * grid)
  vis, tgt = s[:, :num_vis], s[:, num_vis:]
  for v, t in zip(vis, tgt):
    assert len(set(v)) == num_vis and len(set(t)) == grid * grid - num_vis
    assert not set(v) & set(t)
    assert sorted(np.concatenate([v, t])) == list(range(grid * grid))


def test_views_differ_per_example_and_per_step():
  s0, o0 = views.draw_views(keys(8), grid_size=14, gap=4)
  s0 = np.asarray(s0)
  assert len({tuple(r[:20]) for r in s0}) == 8  # every image its own visible set
  s1, o1 = views.draw_views(views.example_keys(jax.random.fold_in(jax.random.key(0), 1), jnp.arange(8)),
                            grid_size=14, gap=4)
  assert not np.array_equal(s0, np.asarray(s1))
  assert not np.array_equal(np.asarray(o0), np.asarray(o1))


def test_views_depend_only_on_the_example_key():
  """Row i gets the same view whether drawn in a batch of 8 or alone: layout-independence."""
  s8, o8 = views.draw_views(keys(8), grid_size=6, gap=2)
  s1, o1 = views.draw_views(keys(8)[5:6], grid_size=6, gap=2)
  np.testing.assert_array_equal(np.asarray(s8)[5], np.asarray(s1)[0])
  np.testing.assert_array_equal(np.asarray(o8)[5], np.asarray(o1)[0])


@pytest.mark.parametrize("gap", [1, 2, 4])
def test_offsets_in_range_and_all_values_used(gap):
  _, off = views.draw_views(keys(32), grid_size=14, gap=gap)
  off = np.asarray(off)
  assert off.shape == (32, 14, 14, 2) and off.min() == 0 and off.max() == gap - 1
  assert len(np.unique(off)) == gap


def test_zero_gap_has_zero_offsets():
  _, off = views.draw_views(keys(4), grid_size=5, gap=0)
  assert not np.asarray(off).any()


def test_patchify_with_gap_picks_the_offset_window():
  p, gap, g, c = 3, 2, 4, 2
  size = g * (p + gap)
  img = np.arange(2 * size * size * c, dtype=np.float32).reshape(2, size, size, c)
  off = np.asarray(views.draw_views(keys(2), grid_size=g, gap=gap)[1])
  out = np.asarray(views.patchify(jnp.asarray(img), p, gap, jnp.asarray(off)))
  assert out.shape == (2, g * g, p * p * c)
  for b in range(2):
    for i in range(g):
      for j in range(g):
        oy, ox = off[b, i, j]
        y0, x0 = i * (p + gap) + oy, j * (p + gap) + ox
        want = img[b, y0:y0 + p, x0:x0 + p, :].reshape(-1)  # (row, col, channel) order
        np.testing.assert_array_equal(out[b, i * g + j], want)


def test_patchify_rejects_a_size_that_is_not_a_grid():
  with pytest.raises(ValueError, match="not a grid"):
    views.patchify(jnp.zeros((1, 30, 30, 3)), 16, 4)


def test_shape_mismatches_at_the_boundaries_are_errors_not_wrong_numbers():
  """Without the checks, PatchDisc with 5 predictions and 4 targets returns a number (the
  diagonal of a 5×4 score matrix) and a (1, K) index broadcasts over the batch."""
  from lmim import losses  # pylint: disable=import-outside-toplevel
  z = jnp.ones((2, 5, 8))
  with pytest.raises(AssertionError, match=r"\(2, 5, 8\).*\(2, 4, 8\)|\(2, 4, 8\).*\(2, 5, 8\)"):
    losses.patch_disc(z, z[:, :4], 0.2)
  with pytest.raises(AssertionError):
    losses.norm_pix_mse(z, z, jnp.ones((2, 4)))
  with pytest.raises(AssertionError):
    views.gather_tokens(z, jnp.zeros((1, 3), jnp.int32))
