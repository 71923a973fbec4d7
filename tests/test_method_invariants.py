"""What each method's sampling and bookkeeping must guarantee, and its bad-input errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmim import config_lib, optim, train, views
from lmim.data import transforms
from lmim.errors import ConfigError
from lmim.methods import cmae, ijepa, pcae
from tiny import tiny_config


def build(method, **overrides):
  cfg = config_lib.resolve(tiny_config(method, **overrides), 4000)
  from lmim import methods  # pylint: disable=import-outside-toplevel
  return methods.build(cfg, 1)


# PCAE ---------------------------------------------------------------------------------------------

def test_pcae_token_counts_per_stage_match_the_paper():
  cfg = config_lib.base_config("pcae")
  assert pcae.stage_counts(147, 3, 0.5) == [147, 73, 36, 18]
  assert pcae.stage_counts(177, 3, 0.5) == [177, 88, 44, 22]      # mask 0.9
  assert [pcae.drop_layers(12, 3, c) for c in range(4)] == [[0, 4, 8], [3, 7, 11], [0, 5, 11], [0, 1, 2]]
  assert cfg.pcae.drop_case == 0 and cfg.pcae.keep_ratio == 0.5


@pytest.mark.parametrize("random_drop", [False, True])
@pytest.mark.slow
def test_pcae_teacher_keeps_distinct_masked_patches(random_drop):
  m = build("pcae", **{"pcae.random_drop": random_drop})
  params, ema = m.init(jax.random.key(0))
  keys = jax.random.split(jax.random.key(1), 4)
  shuffle = views.draw_shuffle(keys, m.num_patches)
  images = jax.random.normal(jax.random.key(2), (4, m.train_image_size, m.train_image_size, 1))
  drop = jax.vmap(jax.random.fold_in, (0, None))(keys, 1) if random_drop else None
  out = m.forward(params, ema, images, shuffle, drop)
  retained = np.asarray(out["retained"])
  assert retained.shape == (4, m.counts[-1]) == (4, 3)            # 12 masked -> 6 -> 3
  masked = np.asarray(shuffle[:, m.len_keep:])
  for r, mk in zip(retained, masked):
    assert len(set(r)) == len(r) and set(r) <= set(mk)
  assert out["pred"].shape == (4, 3, 32)


def test_pcae_similarity_ranking_keeps_the_most_distinctive_tokens():
  from lmim.models.vit import reduce_tokens  # pylint: disable=import-outside-toplevel
  x = jnp.array([[[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [1.0, 0.02]]])  # token 2 is the odd one out
  kept, ids = reduce_tokens(x, jnp.arange(4)[None], 1)
  assert int(ids[0, 0]) == 2


# ContrastiveCrop / CMAE ---------------------------------------------------------------------------

def test_boxes_from_heatmaps_bound_the_activation():
  heat = np.zeros((2, 4, 4), np.float32)
  heat[0, 1:3, 2:4] = 1.0     # rows 1–2, cols 2–3 of a 4×4 map
  heat[1] = np.arange(16).reshape(4, 4)
  boxes = cmae.boxes_from_heatmaps(heat, 16, 0.1)
  assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
  h0, w0, h1, w1 = boxes[0]
  assert 0.1 < h0 < 0.3 and 0.7 < h1 < 0.9 and 0.35 < w0 < 0.55 and w1 > 0.9


def test_contrastive_crop_centres_fall_inside_the_box():
  rng = np.random.default_rng(0)
  box = (0.5, 0.1, 0.9, 0.4)          # lower-left region of a 100×80 image
  for alpha in (0.1, 1.0):
    for _ in range(300):
      top, left, h, w = transforms.contrastive_crop_params(100, 80, box, rng, alpha)
      assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 80
      cy, cx = top + h / 2, left + w / 2
      # The centre lies in the box unless the crop had to be clamped inside the image.
      assert top + h == 100 or 100 * box[0] - 1 <= cy <= 100 * box[2] + 1
      assert left == 0 or left + w == 80 or 80 * box[1] - 1 <= cx <= 80 * box[3] + 1


def test_cmae_boxes_refresh_on_schedule_and_feed_the_crops():
  m = build("cmae", **{"total_steps": 10})
  assert (m.box_warmup, m.box_interval) == (3, 3)
  assert [s for s in range(11) if m.host_state_due(s)] == [3, 6, 9]
  host = m.host_state_init(7)
  assert m.pipeline_args(host) == {}                     # RandomResizedCrop until the first update
  assert host["boxes"].shape == (7, 4)
  host["active"] = np.ones((), np.int32)
  args = m.pipeline_args(host)
  assert args["boxes"].shape == (7, 4) and args["alpha"] == 0.1


@pytest.mark.slow
def test_cmae_position_labels_are_the_visible_patch_ids():
  m = build("cmae")
  params, _ = m.init(jax.random.key(0))
  keys = jax.random.split(jax.random.key(1), 4)
  size = m.train_image_size
  img = jax.random.normal(jax.random.key(2), (4, size, size, 1))
  s1 = views.draw_shuffle(keys, m.num_patches)
  out = m.forward(params, img, img, s1, s1)
  assert 0.0 <= float(out["pos_acc"]) <= 1.0
  # A head that always names the right patch drives the position loss to zero.
  perfect = jax.nn.one_hot(s1[:, :m.len_keep], m.num_patches) * 50.0
  from lmim import losses  # pylint: disable=import-outside-toplevel
  assert float(losses.cross_entropy(perfect, s1[:, :m.len_keep])) < 1e-6


def test_cmae_views_are_two_different_crops():
  setup = train.prepare(tiny_config("cmae"), jax.devices()[:1])
  b = next(train.train_batches(setup, 0, setup.method.host_state_init(setup.info.num_examples)))
  assert b["image"].shape == b["image2"].shape == (1, 16, 16, 16, 1)
  assert not np.allclose(b["image"], b["image2"])


# I-JEPA -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ijepa_target_blocks_are_whole_rectangles_of_one_size_per_step():
  """As the official collator: one target size per batch, every block whole (padding is marked,
  never a cut block), never on the last row or column, the context disjoint from the targets."""
  m = build("ijepa", **{"model.grid_size": 8})
  g, sizes = m.grid_size, set()
  for step in range(12):
    (th, tw), _ = m.block_sizes(step)
    th, tw = int(th), int(tw)
    sizes.add((th, tw))
    ctx, cvalid, tgt, tvalid = (np.asarray(x) for x in m.draw_masks(jax.random.split(jax.random.key(step), 16), step))
    assert tgt.shape == (16, 2, m.target_tokens) and ctx.shape == (16, m.context_tokens)
    for c, cv, blocks, valid in zip(ctx, cvalid, tgt, tvalid):
      assert not set(c[cv]) & set(blocks[valid])                 # context disjoint from every target
      for block, v in zip(blocks, valid):
        ids = block[v]
        assert len(ids) == th * tw == len(set(ids))               # the whole block, nothing cut
        rows, cols = ids // g, ids % g
        assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (th, tw)
        assert rows.max() < g - 1 and cols.max() < g - 1        # torch.randint(0, g − h): never the last row
  assert len(sizes) > 1  # the size changes from step to step


def test_ijepa_block_sizes_and_static_lengths_follow_the_sampler():
  cfg = config_lib.base_config("ijepa").ijepa
  # ViT-H/14 at 224 px: a 16×16 grid; one draw sets scale and aspect together.
  sizes = {tuple(int(v) for v in ijepa.block_size(r, 16, cfg.target_scale, cfg.target_aspect))
           for r in np.linspace(0, 1, 2001)}
  assert sizes == {(5, 7), (6, 6), (6, 7), (7, 6), (8, 6), (9, 6)}
  assert ijepa.largest_block(16, cfg.target_scale, cfg.target_aspect) == 54
  assert {tuple(int(v) for v in ijepa.block_size(r, 16, cfg.context_scale, (1.0, 1.0)))
          for r in np.linspace(0, 1, 101)} == {(15, 15)}
  kt, kc, smallest = ijepa.static_lengths(16, cfg)
  assert kt == 54 and 10 <= smallest <= kc < 225


def test_ijepa_weight_decay_follows_its_cosine_from_0_04_to_0_4():
  cfg = config_lib.base_config("ijepa")
  total = 100
  tx = optim.make(cfg.optim, optim.lr_schedule(cfg.optim, peak_lr=1.0, total_steps=total, warmup_steps=0), total_steps=total, decay_rule=optim.ijepa_decay)
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones((3,))}
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  seen = {}
  for step in range(total + 1):
    updates, state = tx.update(zeros, state, params)   # zero gradients: the update is −lr·wd·θ
    if step in (0, total // 2, total):
      lr = float(optim.lr_schedule(cfg.optim, peak_lr=1.0, total_steps=total, warmup_steps=0)(step))
      seen[step] = -float(updates["w"][0, 0]) / lr
      assert float(updates["b"][0]) == 0.0               # biases: no decay
  assert seen[0] == pytest.approx(0.04) and seen[total // 2] == pytest.approx(0.22) and seen[total] == pytest.approx(0.4)


# MAE / data2vec -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_mae_ids_restore_inverts_the_shuffle():
  m = build("mae")
  params, _ = m.init(jax.random.key(0))
  shuffle = views.draw_shuffle(jax.random.split(jax.random.key(1), 3), m.num_patches)
  size = m.train_image_size
  out = m.forward(params, jax.random.normal(jax.random.key(2), (3, size, size, 1)), shuffle)
  restore = np.asarray(out["ids_restore"])
  np.testing.assert_array_equal(np.take_along_axis(np.asarray(shuffle), restore, 1),
                                np.broadcast_to(np.arange(m.num_patches), restore.shape))
  assert np.asarray(out["mask"]).sum(1).tolist() == [m.num_patches - m.len_keep] * 3


def test_data2vec_block_masks_respect_the_budget():
  mask = np.asarray(views.block_mask(jax.random.split(jax.random.key(0), 32), grid_size=14, num_mask=120))
  counts = mask.sum(1)
  assert counts.max() <= 120 and counts.min() >= 100 and len({m.tobytes() for m in mask}) == 32


# Bad input ----------------------------------------------------------------------------------------

@pytest.fixture
def no_compilation(monkeypatch):
  monkeypatch.setattr(train.jax, "jit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("compiled")))


BAD = [
    ("latent_mim", {"targets.mode": "frozen"}, "targets.mode", "ema"),
    ("latent_mim", {"model.decoder.type": "mlp"}, "model.decoder.type", "cross"),
    ("pcae", {"pcae.keep_ratio": 0.05}, "pcae.keep_ratio", "at least 1"),
    ("pcae", {"pcae.drop_case": 7}, "pcae.drop_case", "[0, 1, 2, 3]"),
    ("ijepa", {"ijepa.target_scale": (0.6, 0.7)}, "ijepa.target_scale", "context tokens"),
    ("ijepa", {"ijepa.target_scale": (0.3, 1.5)}, "ijepa.target_scale", "0 < lo ≤ hi ≤ 1"),
    ("data2vec", {"data2vec.top_k_layers": 9}, "data2vec.top_k_layers", "[1, 2]"),
    ("cmae", {"cmae.con_feature": "max"}, "cmae.con_feature", "'cls' or 'mean'"),
    ("mae", {"mae.mask_ratio": 1.0}, "mae.mask_ratio", "between 1 and"),
]


@pytest.mark.parametrize("method,overrides,field,valid", BAD, ids=[b[2] for b in BAD])
def test_bad_method_config_is_one_line_before_compiling(no_compilation, method, overrides, field, valid):
  with pytest.raises(ConfigError) as e:
    train.prepare(tiny_config(method, **overrides))
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"config.{field}=") and valid in msg
