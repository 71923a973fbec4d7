"""Evaluators whose results depend on example order (few-shot draws, picture selections) beside
ones that do not (NN, kNN), small enough for two processes x 4 CPU devices in a test."""
import ml_collections as mlc


def get_config():
  c = mlc.ConfigDict()
  c.mesh = dict(data=-1, fsdp=1)
  c.evals = dict(
      nn=dict(type="nn_loo", data="mnist5k", split="test[:200]", batch_size=40),
      knn=dict(type="knn", data="mnist5k", split="test[:200]", train_split="train[:400]", k=(5,), batch_size=40),
      fewshot=dict(type="fewshot", datasets=(dict(data="mnist5k", train="train[:400]", test="test[:200]"),),
                   shots=(1, 4), seeds=(1, 2), c_grid=(1e2, 1.0, 1e-2), search_steps=1, batch_size=40),
      pictures=dict(type="pictures", data="mnist5k", split="test[:200]", num_images=4, bank_size=120,
                    batch_size=40),
  )
  return c
