"""Data: sources (TFDS array_record, image folders, the embedded mnist5k and shapes10k), host transforms and
grain pipelines addressed by a global example index."""
from lmim.data.mnist5k import ensure_prepared
from lmim.data.pipeline import eval_batches, image_keys, num_eval_batches, train_batches
from lmim.data.sources import DataInfo, open_source

__all__ = ["DataInfo", "ensure_prepared", "eval_batches", "image_keys", "num_eval_batches", "open_source",
           "train_batches"]
