"""Where prepared datasets live (one directory for every dataset lmim reads or prepares) and how
to prepare one that is not there.

A config's `data_dir` field wins; else `$LMIM_DATA_DIR`; else TFDS's own default
(`$TFDS_DATA_DIR`, or `~/tensorflow_datasets`), so datasets prepared earlier with TFDS are found
where TFDS put them. The embedded mnist5k, `lmim-prepare` and every TFDS read use this rule.
"""
import os

ENV = "LMIM_DATA_DIR"
IMAGENET = "imagenet2012"
# A separate environment for TFDS's own builders (they need TensorFlow; the `tfds build` command also
# needs Apache Beam, so the builder is called from Python instead). Checked: it installs on Python
# 3.11 and writes array_record that lmim's environment reads.
TF_VERSIONS = "tensorflow-cpu==2.21.0 tensorflow-datasets==4.9.10 importlib_resources==7.1.0"


def data_dir(explicit: str | None = None) -> str:
  """The data directory: `explicit`, else $LMIM_DATA_DIR, else $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  if explicit:
    return os.fspath(explicit)
  return (os.environ.get(ENV) or os.environ.get("TFDS_DATA_DIR")
          or os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def how_to_prepare(name: str, data_dir: str) -> str:
  """The command that prepares TFDS dataset `name` in `data_dir` here (it follows "prepare it
  with: "): lmim-prepare for ImageNet; else TFDS's builder, which needs TensorFlow, in a separate
  environment (lmim's own leaves TensorFlow out)."""
  base = name.split(":")[0].split("/")[0]
  if base == IMAGENET:
    return (f"lmim-prepare {IMAGENET} --source <folder with ILSVRC2012_img_train.tar and "
            f"ILSVRC2012_img_val.tar, or with train/ and val/> --data_dir={data_dir} (no TensorFlow needed)")
  return (f"~/tfds-env/bin/python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
          f"data_dir='{data_dir}', file_format='array_record').download_and_prepare()\" — TFDS's builders "
          f"need TensorFlow, which lmim's environment leaves out: create that environment once with "
          f"python3.11 -m venv ~/tfds-env && ~/tfds-env/bin/pip install {TF_VERSIONS} (images you "
          f"already have as class folders need none of this: read them as folder:<root>)")
