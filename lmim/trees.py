"""Naming the leaves of a pytree: one 'a/b/c' spelling shared by the weight-decay rules, checkpoint
listings and diffs, and the official-checkpoint converter."""
import jax


def path_name(path) -> str:
  """'encoder/blocks_0/attn/qkv/kernel' from a jax tree path (dict keys, attributes, indices)."""
  return jax.tree_util.keystr(path, simple=True, separator="/")
