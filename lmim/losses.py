"""Reconstruction losses and the similarity regulariser of Latent MIM (docs/latent_mim.md §9), in
float32.

All inputs are (B, Lt, D) latents in the projector's space: predictions from the decoder,
targets from the (stop-gradient) target encoder.
"""
import chex
import jax
import jax.numpy as jnp


def l2_normalize(x, eps: float = 1e-12):
  """torch's F.normalize: x / max(‖x‖, eps) over the last axis."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def standardize_over_patches(pred, eps: float = 1e-4):
  """The official `pred2unit`: per image and channel, (P − mean) / (unbiased std + eps) over patches."""
  mu = pred.mean(axis=1, keepdims=True)
  sd = jnp.std(pred, axis=1, keepdims=True, ddof=1)
  return (pred - mu) / (sd + eps)


def patch_disc(pred, target, tau: float):
  """PatchDisc (official `infonce_patches`, docs/latent_mim.md §9.1).

  InfoNCE over the targets of the same image: the positive of prediction i is target i, the
  negatives are the other Lt−1 targets of that image. Predictions are standardised across the
  image's patches first; the cross entropy is scaled by 2τ.
      S[b,i,j] = <p̂_bi, t̂_bj> / τ,   L = 2τ · mean_{b,i} (logsumexp_j S[b,i,j] − S[b,i,i])
  """
  chex.assert_rank(pred, 3)
  chex.assert_equal_shape([pred, target])  # prediction i's positive is target i: same tokens
  p = l2_normalize(standardize_over_patches(pred.astype(jnp.float32)))
  t = l2_normalize(target.astype(jnp.float32))
  scores = jnp.einsum("bid,bjd->bij", p, t) / tau
  positives = jnp.diagonal(scores, axis1=1, axis2=2)
  return 2.0 * tau * jnp.mean(jax.nn.logsumexp(scores, axis=-1) - positives)


def norm_mse(pred, target):
  """Official `norm_l2` (docs/latent_mim.md §9.2): MSE to targets standardised per token
  (unbiased var + 1e-6)."""
  chex.assert_equal_shape([pred, target])  # no silent broadcasting of a target
  t = target.astype(jnp.float32)
  t = (t - t.mean(-1, keepdims=True)) / jnp.sqrt(jnp.var(t, axis=-1, keepdims=True, ddof=1) + 1e-6)
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - t))


def pairwise_sim_per_image(z):
  """Mean cosine over ALL token pairs of each image, diagonal included: (B, L, D) -> (B,).

  mean_{i,j} cos(z_i, z_j) = ‖mean_i ẑ_i‖², which is O(L·D) instead of the O(L²·D) Gram matrix.
  Values near 1 mean every token of an image maps to the same direction (collapse).
  """
  return jnp.sum(jnp.square(l2_normalize(z.astype(jnp.float32)).mean(axis=1)), axis=-1)


def pairwise_sim(z):
  """The official logged Sim (docs/latent_mim.md §9.5): per-image mean pairwise cosine, averaged
  over the batch."""
  return pairwise_sim_per_image(z).mean()


def sim_regularizer(z, sim_target, group_size: int):
  """(Sim(z) − s_t)² where Sim is averaged over each group of `group_size` examples first.

  The official code squares the mean over one GPU's micro-batch (docs/latent_mim.md §9.4); making
  the group an explicit size keeps the loss independent of the device count and of accumulation.
  """
  sims = pairwise_sim_per_image(z).reshape(-1, group_size).mean(axis=1)
  return jnp.mean(jnp.square(sims - sim_target))


def token_distances(pred, target):
  """Per-token squared L2 and L1 distances (B, Lt) between predictions and targets."""
  chex.assert_rank(pred, 3)
  chex.assert_equal_shape([pred, target])
  d = pred.astype(jnp.float32) - target.astype(jnp.float32)
  return jnp.sum(jnp.square(d), axis=-1), jnp.sum(jnp.abs(d), axis=-1)


def mse(pred, target):
  """Paper ablation (seed formula): Δ_L2 = ‖ẑ − z‖², averaged over target tokens."""
  return token_distances(pred, target)[0].mean()


def l1(pred, target):
  """Paper ablation: Δ_L1 = ‖ẑ − z‖₁, averaged over target tokens."""
  return token_distances(pred, target)[1].mean()


def huber(pred, target, delta: float):
  """Paper ablation, token-level Huber: ½Δ_L2 if Δ_L2 < δ², else δ(Δ_L1 − δ/2), averaged over
  target tokens. Δ_L2 is summed over the D channels, so δ must scale with √D for both branches to
  occur (δ = 1 puts every token of a real latent in the linear branch: Huber = L1 − ½)."""
  d2, d1 = token_distances(pred, target)
  return jnp.where(d2 < delta ** 2, 0.5 * d2, delta * (d1 - 0.5 * delta)).mean()


def huber_quadratic_fraction(pred, target, delta: float):
  """The fraction of target tokens in the token-level Huber's quadratic branch (Δ_L2 < δ²)."""
  d2, _ = token_distances(pred, target)
  return jnp.mean((d2 < delta ** 2).astype(jnp.float32))


def huber_elementwise(pred, target, delta: float):
  """torch's `huber_loss(pred, target, delta)`: ½x² if |x| < δ else δ(|x| − ½δ), per channel, mean."""
  x = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
  return jnp.where(x < delta, 0.5 * jnp.square(x), delta * (x - 0.5 * delta)).mean()


def smooth_l1(pred, target, beta: float):
  """torch's smooth_l1_loss (elementwise, mean): 0.5·x²/β if |x| < β else |x| − 0.5·β."""
  x = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
  return jnp.where(x < beta, 0.5 * jnp.square(x) / beta, x - 0.5 * beta).mean()


def layer_norm_no_params(x, eps: float = 1e-6):
  """Parameter-free LayerNorm over the last axis (biased variance, as F.layer_norm)."""
  x = x.astype(jnp.float32)
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / jnp.sqrt(jnp.var(x, axis=-1, keepdims=True) + eps)


def cosine_distance(pred, target):
  """1 − cos, averaged over tokens (PCAE)."""
  return 1.0 - jnp.sum(l2_normalize(pred.astype(jnp.float32)) * l2_normalize(target.astype(jnp.float32)),
                       axis=-1).mean()


def norm_pix_mse(pred, target_patches, removed, norm_pix: bool = True):
  """MAE's loss: per-patch MSE to (optionally standardised) pixels, averaged over removed patches.

  pred, target_patches (B, L, p·p·C); removed (B, L) 1 where the patch was masked. The target
  standardisation uses the unbiased variance + 1e-6, as MAE (torch .var()).
  """
  chex.assert_rank([pred, removed], [3, 2])
  chex.assert_equal_shape([pred, target_patches])
  chex.assert_equal_shape_prefix([pred, removed], 2)
  t = target_patches.astype(jnp.float32)
  if norm_pix:
    t = (t - t.mean(-1, keepdims=True)) / jnp.sqrt(jnp.var(t, axis=-1, keepdims=True, ddof=1) + 1e-6)
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - t), axis=-1)
  return jnp.sum(per_patch * removed) / jnp.sum(removed)


def info_nce(a, b, tau: float):
  """Symmetric InfoNCE between two batches of embeddings, MoCo v3's `ctr(q1, k2) + ctr(q2, k1)`:
  2τ·(CE(a·bᵀ/τ) + CE(b·aᵀ/τ)) with the positives on the diagonal and the rest of the batch as
  negatives (the 2τ factor keeps the gradient's magnitude independent of τ)."""
  chex.assert_rank(a, 2)
  chex.assert_equal_shape([a, b])  # row i of a and of b are the two views of example i
  a, b = l2_normalize(a.astype(jnp.float32)), l2_normalize(b.astype(jnp.float32))
  logits = a @ b.T / tau
  labels = jnp.arange(a.shape[0])
  ce = lambda lg: jnp.mean(jax.nn.logsumexp(lg, axis=-1) - lg[labels, labels])
  return 2.0 * tau * (ce(logits) + ce(logits.T))


def cross_entropy(logits, labels):
  """Mean softmax cross entropy with integer labels."""
  logits = logits.astype(jnp.float32)
  picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


RECONSTRUCTION_LOSSES = ("patch_disc", "norm_mse", "mse", "l1", "huber")
# The official config names, accepted as aliases.
LOSS_ALIASES = {"infonce_patches": "patch_disc", "norm_l2": "norm_mse"}
