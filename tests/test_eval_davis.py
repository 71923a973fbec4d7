"""The `davis` evaluator: J and F against hand-computed values, the per-object statistics, label
propagation on features whose answer is known (and against a dense reference of DINO's
formula), and the evaluator end to end on a tiny Latent MIM model and synthetic videos served
through `tfds.data_source` (tfds.testing.mock_data with a custom `as_data_source_fn`)."""
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

import lmim.evaluators
import lmim.sharding
from lmim import config_lib, methods
from lmim.errors import ConfigError, DataNotPreparedError
from lmim.evaluators import davis, davis_metrics as dm
from tiny import tiny_config


# J and F ------------------------------------------------------------------------------------------

def square(shape, top, left, size):
  m = np.zeros(shape, bool)
  m[top:top + size, left:left + size] = True
  return m


def test_j_and_f_edge_cases():
  gt = square((40, 50), 10, 10, 12)
  empty = np.zeros_like(gt)
  assert dm.db_eval_iou(gt, gt) == 1.0 and dm.f_measure(gt, gt) == 1.0
  assert dm.db_eval_iou(gt, empty) == 0.0 and dm.f_measure(empty, gt) == 0.0   # P = 1, R = 0
  assert dm.f_measure(gt, empty) == 0.0                                          # P = 0, R = 1
  assert dm.db_eval_iou(empty, empty) == 1.0 and dm.f_measure(empty, empty) == 1.0
  # Void pixels are ignored: a wrong prediction inside the void region costs nothing.
  void = square((40, 50), 0, 30, 20)
  pred = gt | square((40, 50), 0, 35, 5)
  assert dm.db_eval_iou(gt, pred) < 1.0 and dm.db_eval_iou(gt, pred, void) == 1.0


def test_frame_scores_count_void_as_background_as_the_official_semi_supervised_scorer():
  gt = square((40, 50), 10, 10, 12).astype(np.uint8)
  gt[30:40, 30:50] = 255                               # a void band
  pred = gt.copy()
  pred[30:40, 30:50] = 1                               # object 1 predicted over the void band
  j, f = dm.frame_scores(pred, gt, num_objects=1)
  assert j[0] == pytest.approx(144 / (144 + 200))    # the 200 void pixels are false positives
  assert f[0] < 1.0
  j, f = dm.frame_scores(np.where(gt == 255, 0, gt), gt, num_objects=1)
  assert j[0] == 1.0 and f[0] == 1.0


def test_j_of_a_shifted_square_is_its_iou():
  gt = square((60, 80), 10, 10, 20)
  pred = square((60, 80), 10, 13, 20)           # 3 px to the right: 20·17 shared of 20·23
  assert dm.db_eval_iou(gt, pred) == pytest.approx(340 / 460)


def test_seg2bmap_of_a_square():
  s, a, b = 6, 3, 4
  bmap = dm.seg2bmap(square((12, 14), a, b, s))
  expected = np.zeros((12, 14), bool)
  expected[a - 1, b - 1:b + s] = True            # row above (incl. the corner): S or SE inside
  expected[a:a + s, b - 1] = True                # column left: E inside
  expected[a + s - 1, b:b + s] = True            # last row inside: S outside
  expected[a:a + s, b + s - 1] = True            # last column inside: E outside
  np.testing.assert_array_equal(bmap, expected)
  assert bmap.sum() == 4 * s


def test_disk_is_skimage_disk():
  np.testing.assert_array_equal(dm.disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
  d = dm.disk(8)
  assert d.shape == (17, 17) and d.sum() == 197  # lattice points with x² + y² <= 64
  assert dm.bound_pixels((480, 854)) == 8        # ceil(0.008 · ‖(480, 854)‖) = ceil(7.84)
  m = np.zeros((30, 30), bool)
  m[0, 0] = m[15, 20] = True
  out = dm.dilate(m, 3)
  yy, xx = np.mgrid[:30, :30]
  ref = ((yy ** 2 + xx ** 2) <= 9) | (((yy - 15) ** 2 + (xx - 20) ** 2) <= 9)
  np.testing.assert_array_equal(out, ref)


def brute_f(fg, gt, r):
  """F with the tolerance as a Euclidean distance between boundary pixels (no dilation)."""
  pf, pg = np.argwhere(dm.seg2bmap(fg)), np.argwhere(dm.seg2bmap(gt))
  d2 = ((pf[:, None, :] - pg[None, :, :]) ** 2).sum(-1)
  precision, recall = np.mean(d2.min(1) <= r * r), np.mean(d2.min(0) <= r * r)
  return 2 * precision * recall / (precision + recall)


def test_f_of_shifted_squares():
  gt = square((60, 80), 10, 10, 20)
  # Within the tolerance (5 px here): every boundary pixel is matched.
  assert dm.f_measure(square((60, 80), 13, 14, 20), gt, bound_th=5) == 1.0
  # Beyond it: only the parts of the outlines that stay within 5 px match.
  far = square((60, 80), 10, 22, 20)
  f = dm.f_measure(far, gt, bound_th=5)
  assert 0 < f < 1
  assert f == pytest.approx(brute_f(far, gt, 5))
  # The default tolerance at 480p (8 px).
  gt = square((480, 854), 100, 100, 200)
  assert dm.f_measure(square((480, 854), 105, 105, 200), gt) == 1.0
  assert dm.f_measure(square((480, 854), 100, 130, 200), gt) == pytest.approx(
      brute_f(square((480, 854), 100, 130, 200), gt, 8))


def test_per_object_statistics():
  v = [0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1, 0.0]
  # Bins cut at round(linspace(1, 8, 5) + 1e-10) - 1 = [0, 2, 4, 5, 7]: first v[0:3], last v[5:8].
  mean, recall, decay = dm.db_statistics(v)
  assert mean == pytest.approx(0.45) and recall == pytest.approx(0.5) and decay == pytest.approx(0.8 - 0.1)
  mean, recall, decay = dm.db_statistics([1.0, np.nan, 0.0, 0.5])
  assert mean == pytest.approx(0.5)
  # Averaged over objects: J 0.45 and 0.25, F 1 and 0.5.
  out = dm.summarize([v, [0.25] * 4], [[1.0] * 8, [0.5] * 4])
  assert out["J_mean"] == pytest.approx(0.35) and out["F_mean"] == pytest.approx(0.75)
  assert out["JF_mean"] == pytest.approx(0.55)
  assert out["J_recall"] == pytest.approx(0.25) and out["J_decay"] == pytest.approx(0.35)
  assert out["F_decay"] == pytest.approx(0.0)


# Propagation --------------------------------------------------------------------------------------

GRID = (5, 7)


def identity_features(shift_cols=0):
  """Position (r, c) carries the one-hot of position (r, c - shift): an image whose content moved
  `shift_cols` to the right (patches entering from the left repeat column 0)."""
  h, w = GRID
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  src = rows * w + np.clip(cols - shift_cols, 0, w - 1)
  return np.eye(h * w, dtype=np.float32)[src.reshape(-1)]


def first_map():
  m = np.zeros(GRID, np.int32)
  m[1:3, 1:3] = 1
  m[3:5, 4:6] = 2
  return m


def run_track(feature_frames, first, **kw):
  opts = dict(grid=GRID, patch_size=1, n_last_frames=2, window=12, topk=5, temperature=0.1, chunk=2)
  opts.update(kw)
  preds = dict(davis.track([np.stack(feature_frames)], first, **opts))
  return [np.asarray(preds[t]) for t in sorted(preds)]


def test_labels_propagate_exactly_on_identifying_features():
  f = identity_features()
  for pred in run_track([f] * 4, first_map()):
    np.testing.assert_array_equal(pred, first_map())
  # topk = 1: the soft labels themselves are the first frame's one-hot labels.
  labels = davis.propagate(jnp.asarray(f), jnp.asarray(f[None]), jnp.asarray(davis.one_hot(first_map(), 3)[None]),
                           jnp.ones((1,), bool), grid=GRID, window=12, topk=1, temperature=0.1)
  np.testing.assert_array_equal(labels, davis.one_hot(first_map(), 3))


def test_labels_follow_a_moving_object():
  frames = [identity_features(s) for s in range(3)]   # the content moves one column per frame
  preds = run_track(frames, first_map(), n_last_frames=1)
  for s, pred in enumerate(preds, start=1):
    expected = first_map()[:, np.clip(np.arange(GRID[1]) - s, 0, GRID[1] - 1)]
    np.testing.assert_array_equal(pred, expected)


def test_window_excludes_far_sources():
  h, w = GRID
  f0 = identity_features()
  labels = np.zeros(GRID, np.int32)
  labels[0, 0] = 1
  target = f0.copy()
  target[0 * w + 6] = f0[0]                      # (0, 6) looks exactly like source (0, 0)
  args = (jnp.asarray(target), jnp.asarray(f0[None]), jnp.asarray(davis.one_hot(labels, 2)[None]),
          jnp.ones((1,), bool))
  near = davis.propagate(*args, grid=GRID, window=5, topk=1, temperature=0.1)
  assert float(near[6, 1]) == 0.0               # |Δcol| = 6 > 5: never a source
  wide = davis.propagate(*args, grid=GRID, window=6, topk=1, temperature=0.1)
  assert float(wide[6, 1]) == 1.0
  assert float(davis.propagate(*args, grid=GRID, window=0, topk=1, temperature=0.1)[6, 1]) == 1.0
  # Invalid (padding) context slots never contribute either.
  two = (jnp.asarray(target), jnp.asarray(np.stack([f0, target])),
         jnp.asarray(np.stack([davis.one_hot(labels, 2), davis.one_hot(np.ones(GRID, int), 2)])))
  masked = davis.propagate(*two, jnp.array([True, False]), grid=GRID, window=12, topk=3, temperature=0.1)
  np.testing.assert_allclose(masked, davis.propagate(*args, grid=GRID, window=12, topk=3, temperature=0.1))


def dense_reference(target, ctx_feats, ctx_labels, grid, window, topk, temperature):
  """DINO's label_propagation, literally: dense affinity, neighbourhood mask, top-k threshold."""
  h, w = grid
  aff = np.exp(np.einsum("td,nsd->nts", target, ctx_feats).astype(np.float64) / temperature)
  r, c = np.divmod(np.arange(h * w), w)
  mask = (np.abs(r[:, None] - r[None]) <= window) & (np.abs(c[:, None] - c[None]) <= window)
  aff = (aff * mask).transpose(0, 2, 1).reshape(-1, h * w)   # (n·hw sources, hw targets)
  kth = np.sort(aff, axis=0)[-topk]
  aff[aff < kth] = 0
  aff /= aff.sum(0, keepdims=True)
  return (ctx_labels.reshape(-1, ctx_labels.shape[-1]).T @ aff).T


def test_chunked_propagation_matches_unchunked_and_the_dense_reference():
  rng = np.random.default_rng(0)
  h, w = GRID
  feats = rng.normal(size=(4, h * w, 16)).astype(np.float32)
  feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
  labels = rng.dirichlet(np.ones(3), size=(3, h * w)).astype(np.float32)
  args = (jnp.asarray(feats[3]), jnp.asarray(feats[:3]), jnp.asarray(labels), jnp.ones((3,), bool))
  kw = dict(grid=GRID, window=2, topk=5, temperature=0.1)
  full = np.asarray(davis.propagate(*args, chunk=None, **kw))
  for chunk in (1, 2, 3, 5, 9):
    np.testing.assert_array_equal(np.asarray(davis.propagate(*args, chunk=chunk, **kw)), full)
  ref = dense_reference(feats[3], feats[:3], labels, GRID, 2, 5, 0.1)
  np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-6)


def test_fixed_size_queue_matches_dinos_fifo():
  """The padded FIFO buffer gives DINO's context at every frame: the first frame + the last
  n_last_frames frames (fewer at the start), each with its soft labels."""
  rng = np.random.default_rng(1)
  h, w = GRID
  feats = rng.normal(size=(7, h * w, 8)).astype(np.float32)
  feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
  first = first_map()
  onehot = davis.one_hot(first, 8)
  queue, expected = [], []
  for t in range(1, 7):
    ctx = [(feats[0], onehot)] + queue
    lab = dense_reference(feats[t], np.stack([c[0] for c in ctx]), np.stack([c[1] for c in ctx]), GRID, 3, 4, 0.1)
    queue = (queue + [(feats[t], lab.astype(np.float32))])[-2:]
    expected.append(np.asarray(davis.segment(jnp.asarray(lab, jnp.float32), GRID, 1)))
  preds = dict(davis.track([feats[:3], feats[3:]], first, grid=GRID, patch_size=1, n_last_frames=2, window=3,
                           topk=4, temperature=0.1, chunk=2))
  assert sorted(preds) == list(range(1, 7))
  for t in range(1, 7):
    np.testing.assert_array_equal(np.asarray(preds[t]), expected[t - 1])
  assert any((e != first).any() for e in expected)  # the labels do evolve


def test_segment_upsamples_min_max_normalises_and_argmaxes():
  labels = np.zeros((2, 2, 8), np.float32)
  labels[..., 0] = [[0.6, 0.6], [0.6, 0.5]]      # background, nearly flat
  labels[..., 1] = [[0.4, 0.4], [0.4, 0.5]]      # object: min-max makes its max 1
  out = np.asarray(davis.segment(jnp.asarray(labels.reshape(4, 8)), (2, 2), 2))
  assert out.shape == (4, 4) and out[3, 3] == 1 and out[0, 0] == 0


def test_target_size_is_dinos():
  assert davis.target_size(480, 854, 480, 64) == (480, 832)
  assert davis.target_size(854, 480, 480, 64) == (832, 480)
  assert davis.target_size(20, 30, 16, 8) == (16, 24)


# The evaluator ------------------------------------------------------------------------------------

def build():
  cfg = config_lib.resolve(tiny_config("latent_mim"), 4000)
  method = methods.build(cfg, 3)   # RGB frames
  params, ema = method.init(jax.random.key(0))
  return method, types.SimpleNamespace(params=params, ema_params=ema)


@pytest.fixture(scope="module")
def tiny():
  return build()


def context(method, devices=None, name="davis"):
  mesh = lmim.sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)), devices or jax.devices()[:1])
  return lmim.evaluators.context(method, mesh, name)


def synthetic_video(seed, n=5, shape=(20, 30)):
  """Two squares on a textured ground moving a pixel per frame; object 2 is void-bordered."""
  rng = np.random.default_rng(seed)
  ground = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
  frames, segs = [], []
  for t in range(n):
    img, seg = ground.copy(), np.zeros(shape, np.uint8)
    seg[4:12, 3 + t:11 + t] = 1
    seg[12:18, 18 - t:24 - t] = 2
    img[seg == 1] = (250, 20, 20)
    img[seg == 2] = (20, 20, 250)
    frames.append(img)
    segs.append(seg[..., None])
  return {"video": {"frames": np.stack(frames), "segmentations": np.stack(segs)},
          "metadata": {"num_frames": n, "video_name": f"video{seed}"}}


def mock_davis():
  videos = [synthetic_video(0), synthetic_video(1, n=4)]
  return tfds.testing.mock_data(as_data_source_fn=lambda self, split, **kw: videos)


FIELDS = dict(data="davis/480p", split="validation", short_side=16, multiple=8, batch_size=4, chunk=2)


@pytest.mark.slow
def test_evaluator_end_to_end_on_one_and_eight_devices(tiny, tmp_path):
  method, state = tiny
  cfg = ml_collections.ConfigDict(dict(type="davis", data_dir=str(tmp_path), encoder="online",
                                       feature="patch_tokens", **FIELDS))
  results = []
  with mock_davis():
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = lmim.sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)), devices)
      ev = lmim.evaluators.from_config("davis", cfg, method=method, mesh=mesh)
      results.append(dict(ev.run(state)))
  one, eight = results
  assert set(one) == {"J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay", "JF_mean"}
  assert one["JF_mean"] == pytest.approx((one["J_mean"] + one["F_mean"]) / 2)
  for key in one:
    assert one[key] == pytest.approx(eight[key], abs=1e-6), (one, eight)


def test_evaluator_on_identifying_features_predicts_the_ground_truth(tiny, tmp_path, monkeypatch):
  """With features that identify each patch of a static video, the propagated labels are the
  GT's; the only errors are DINO's bilinear ×p upsampling rounding off each convex corner that is
  not on the image border (1 pixel per corner at p = 4)."""
  method, state = tiny
  # Square objects aligned to the 4-px patches of 16×24 frames (view 16×24, grid 4×6).
  seg = np.zeros((16, 24), np.uint8)
  seg[4:12, 4:12] = 1                            # 4 interior corners
  seg[8:16, 16:24] = 2                           # 1 interior corner, 3 on the border
  frames = np.zeros((4, 16, 24, 3), np.uint8)
  segs = np.broadcast_to(seg, (4, 16, 24)).copy()
  with mock_davis():
    ev = davis.Evaluator(context(method), data_dir=str(tmp_path), **FIELDS)
  ident = jnp.eye(24, dtype=jnp.float32)[None]
  monkeypatch.setattr(ev, "_features", lambda params, fr, size: iter([jnp.repeat(ident, len(fr), 0)]))
  j, f = ev.evaluate_video(state.params["encoder"], frames, segs)
  assert j.shape == (2, 2)                       # 2 objects × frames 1..2 (first and last excluded)
  np.testing.assert_allclose(j, [[60 / 64] * 2, [63 / 64] * 2])
  np.testing.assert_array_equal(f, 1.0)          # a missing corner pixel is within bound_pix = 1


def test_unprepared_dataset_says_how_to_prepare(tiny, tmp_path):
  method, _ = tiny
  with pytest.raises(DataNotPreparedError) as err:
    davis.Evaluator(context(method), data_dir=str(tmp_path), **FIELDS)
  msg = str(err.value)
  assert "\n" not in msg and "tfds.builder('davis/480p'" in msg, msg


@pytest.mark.parametrize("field,value", [("n_last_frames", -1), ("topk", 0), ("temperature", 0.0),
                                         ("temperature", -1), ("short_side", 18), ("multiple", 6),
                                         ("window", -2), ("chunk", 0), ("feature", "pooled"),
                                         ("encoder", "target"), ("std", (1, 1))])
def test_bad_fields_are_one_line_config_errors(tiny, tmp_path, field, value):
  method, _ = tiny
  with pytest.raises(ConfigError) as err:
    davis.Evaluator(context(method), data_dir=str(tmp_path), **{**FIELDS, field: value})
  msg = str(err.value)
  assert "\n" not in msg and msg.startswith(f"config.evals.davis.{field}="), msg


def test_unknown_field_is_rejected(tiny):
  method, _ = tiny
  mesh = lmim.sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)), jax.devices()[:1])
  cfg = ml_collections.ConfigDict(dict(type="davis", data="davis/480p", split="validation", topK=3))
  with pytest.raises(ConfigError, match="evals.davis.topK"):
    lmim.evaluators.from_config("davis", cfg, method=method, mesh=mesh)


def test_grayscale_encoder_is_rejected(tmp_path):
  cfg = config_lib.resolve(tiny_config("latent_mim"), 4000)
  method = methods.build(cfg, 1)
  with pytest.raises(ConfigError, match="evals.davis.data"):
    davis.Evaluator(context(method), data_dir=str(tmp_path), **FIELDS)


def test_dino_davis_preset_fields_are_accepted():
  import inspect
  accepted = inspect.signature(davis.Evaluator.__init__).parameters
  for key in ("data", "split", "data_dir", "encoder", "feature"):
    assert key in accepted
  assert davis.datasets(dict(data="davis/480p", split="validation")) == [("davis/480p", "validation", None)]


def test_torch_bicubic_kernel_is_torchs_not_keys_half():
  """2× upsampling: output 1 sits at t = 0.25 past input 0; torch's a = -0.75 weights (jax's and
  PIL's a = -0.5 kernel gives -0.0703, 0.8672, 0.2266, -0.0234 instead); borders replicated."""
  from lmim.models import posemb  # pylint: disable=import-outside-toplevel
  w = posemb.torch_bicubic_matrix(6, 12)
  np.testing.assert_allclose(w[3, 0:4], [-0.10546875, 0.87890625, 0.26171875, -0.03515625], atol=1e-12)
  np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
  assert w[0, 0] == pytest.approx(1.10546875)  # taps below 0 fold onto row 0
  np.testing.assert_allclose(posemb.torch_bicubic_matrix(5, 5), np.eye(5), atol=1e-12)


def test_interpolated_positions_stay_in_the_trained_range():
  """A 14×14 table whose cells hold their own (row, col) coordinates, interpolated as DINO does to
  a 30×52 grid: coordinates stay within what training saw (extrapolation reaches 51) and follow
  DINO's sampling; the training grid comes back unchanged."""
  from lmim.models import posemb  # pylint: disable=import-outside-toplevel
  g = 14
  rr, cc = np.meshgrid(np.arange(g, dtype=np.float32), np.arange(g, dtype=np.float32), indexing="ij")
  table = np.concatenate([np.zeros((1, 2), np.float32), np.stack([rr, cc], -1).reshape(g * g, 2)])
  out = np.asarray(posemb.interpolate_table(jnp.asarray(table), g, (30, 52)))
  cells = out[1:].reshape(30, 52, 2)
  assert out.shape == (1 + 30 * 52, 2) and np.all(out[0] == 0)
  assert cells[..., 0].min() > -0.25 and cells[..., 0].max() < g - 0.75  # cubic overshoot only
  assert cells[..., 1].min() > -0.25 and cells[..., 1].max() < g - 0.75
  # column i samples source coordinate (i + 0.5)·14/52.1 − 0.5 (DINO's +0.1 in the scale factor);
  # torch's a = -0.75 kernel follows a line only to within a few hundredths
  i = np.arange(10, 40)
  np.testing.assert_allclose(cells[5, i, 1], (i + 0.5) * g / 52.1 - 0.5, atol=0.06)
  assert np.all(np.diff(cells[5, :, 1]) > 0) and np.allclose(cells[:, :, 1], cells[:1, :, 1], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(posemb.interpolate_table(jnp.asarray(table), g, (g, g))), table)


@pytest.mark.slow
def test_davis_encodes_frames_with_interpolated_positions_by_default(tiny):
  """The default position table is the trained one interpolated: features differ from
  extrapolated sin-cos positions on a larger grid, equal them on the training grid."""
  method, state = tiny
  g, p = method.encoder.grid_size, method.patch_size
  assert inspect_default(davis.Evaluator, "positions") == "interpolate"
  big = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, 2 * g * p, 3 * g * p, 3)), jnp.float32)
  train = big[:, :g * p, :g * p]
  for frames, same in ((big, False), (train, True)):
    size = frames.shape[1:3]
    a = davis.frame_feature_fn(method, "patch_tokens", size, davis.MEAN, davis.STD, "interpolate")(state.params["encoder"], frames)
    b = davis.frame_feature_fn(method, "patch_tokens", size, davis.MEAN, davis.STD, "extrapolate")(state.params["encoder"], frames)
    assert np.allclose(a, b, atol=1e-5) == same


def inspect_default(cls, name):
  import inspect  # pylint: disable=import-outside-toplevel
  return inspect.signature(cls.__init__).parameters[name].default


def test_the_dino_davis_preset_pins_dinos_protocol():
  from lmim import cli  # pylint: disable=import-outside-toplevel
  cfg, _ = cli.load_config("configs/eval.py:preset=dino_davis")
  ev = cfg.evals.dino_davis.to_dict()
  assert {k: ev[k] for k in ("data", "split", "feature", "short_side", "multiple", "n_last_frames", "topk",
                             "window", "temperature", "positions")} == dict(
      data="davis/480p", split="validation", feature="patch_tokens", short_side=480, multiple=64,
      n_last_frames=7, topk=5, window=12, temperature=0.1, positions="interpolate")
  assert lmim.evaluators.protocol("dino_davis", cfg.evals.dino_davis)["mean"] == (0.485, 0.456, 0.406)
