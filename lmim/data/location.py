"""Where prepared datasets live: one directory for every dataset lmim reads or prepares.

A config's `data_dir` field wins; else `$LMIM_DATA_DIR`; else TFDS's own default
(`$TFDS_DATA_DIR`, or `~/tensorflow_datasets`), so datasets prepared earlier with TFDS are found
where TFDS put them. The embedded mnist5k, `lmim-prepare` and every TFDS read use this rule.
"""
import os

ENV = "LMIM_DATA_DIR"


def data_dir(explicit: str | None = None) -> str:
  """The data directory: `explicit`, else $LMIM_DATA_DIR, else $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  if explicit:
    return os.fspath(explicit)
  return (os.environ.get(ENV) or os.environ.get("TFDS_DATA_DIR")
          or os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))
