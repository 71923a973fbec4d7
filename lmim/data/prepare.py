"""Prepare datasets for lmim without TensorFlow: `lmim-prepare` (python -m lmim.data.prepare).

    lmim-prepare imagenet2012 --source /data/ILSVRC2012     # -> <data dir>/imagenet2012/5.1.0
    lmim-prepare folder my_images --source /data/my_images   # -> <data dir>/my_images/1.0.0

Both write a TFDS dataset in array_record format into the data directory (lmim.data.location:
`--data_dir`, else `$LMIM_DATA_DIR`, else `~/tensorflow_datasets`), which every lmim config then
reads by name (`input.data=imagenet2012`, `input.data=my_images`) with `tfds.data_source`.
TFDS's own `tfds build` needs TensorFlow for most datasets (ImageNet's builder converts its few
CMYK and PNG files with TensorFlow); lmim does those conversions with PIL instead.

imagenet2012: `--source` holds what image-net.org gives, either as downloaded —
`ILSVRC2012_img_train.tar` (one tar per class inside) and `ILSVRC2012_img_val.tar` — or
extracted: `train/<wnid>/*.JPEG` and `val/` with the 50,000 `ILSVRC2012_val_*.JPEG` files flat
(labelled from the validation ground truth that ships inside tensorflow_datasets) or sorted into
`val/<wnid>/` folders. Splits `train` and `validation`, labels = index of the wnid in sorted order,
features `image`, `label`, `file_name`: exactly the layout of TFDS's imagenet2012 5.1.0 (JPEG
bytes are kept as they are; the 22 CMYK JPEGs and the one PNG are re-encoded as RGB JPEG at
quality 100, as TFDS does), so code written for TFDS's ImageNet reads it unchanged.

folder: `--source` is an image folder as `input.data=folder:<root>` reads it (`<root>/<split>/
<class>/*` or `<root>/<class>/*` for `train` alone); classes are the sorted folder names.

Writing is crash-safe (TFDS writes into a temporary folder and renames it when every split is
complete) and a dataset that is already prepared is left alone.
"""
import argparse
import contextlib
import io
import logging
import os
import re
import sys
import tarfile
import time

import tensorflow_datasets as tfds
from PIL import Image

from lmim.data import location, sources
from lmim.errors import DataNotPreparedError, LmimError

log = logging.getLogger("lmim")

IMAGENET = location.IMAGENET
IMAGENET_VERSION = "5.1.0"  # TFDS's imagenet2012 version whose layout is written
_IMAGENET_DIR = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012")
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG$")


###################################################################################################
# Image bytes.
###################################################################################################


def rgb_jpeg(data: bytes) -> bytes:
  """JPEG bytes as TFDS stores ImageNet: RGB or grayscale JPEGs unchanged; anything else (CMYK JPEG,
  a PNG named .JPEG) decoded, converted to RGB and re-encoded as JPEG at quality 100."""
  with Image.open(io.BytesIO(data)) as img:
    if img.format == "JPEG" and img.mode in ("RGB", "L"):
      return data
    out = io.BytesIO()
    img.convert("RGB").save(out, format="JPEG", quality=100)
    return out.getvalue()


def _lossless(data: bytes, channels: int) -> tuple[bytes, str]:
  """Image bytes for the folder datasets: JPEG/PNG in the right colour mode kept as they are,
  anything else (another format, palette, alpha, CMYK) converted and stored as PNG."""
  with Image.open(io.BytesIO(data)) as img:
    mode = "L" if channels == 1 else "RGB"
    if img.format in ("JPEG", "PNG") and img.mode == mode:
      return data, img.format.lower()
    out = io.BytesIO()
    img.convert(mode).save(out, format="PNG")
    return out.getvalue(), "png"


###################################################################################################
# ImageNet: what image-net.org gives, as tars or extracted.
###################################################################################################


def imagenet_classes() -> list[str]:
  """The 1,000 wnids in TFDS's label order (sorted), from the file inside tensorflow_datasets."""
  with open(os.path.join(_IMAGENET_DIR, "labels.txt"), encoding="utf-8") as f:
    return f.read().split()


def imagenet_validation_wnids() -> list[str]:
  """The wnid of ILSVRC2012_val_00000001 ... _00050000, in order (ILSVRC2012's ground truth, as
  shipped inside tensorflow_datasets)."""
  with open(os.path.join(_IMAGENET_DIR, "validation_labels.txt"), encoding="utf-8") as f:
    return f.read().split()


def _image_files(folder: str) -> list[str]:
  return sorted(f for f in os.listdir(folder) if not f.startswith(".")
                and f.lower().endswith(sources.IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))


def _read(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _imagenet_train(source: str):
  """(file name, bytes, wnid) of every training image, from the tar of tars or train/<wnid>/."""
  tar_path = os.path.join(source, "ILSVRC2012_img_train.tar")
  if os.path.isfile(tar_path):
    with tarfile.open(tar_path, mode="r|") as outer:
      for member in outer:
        if not member.isfile() or not member.name.endswith(".tar"):
          continue
        wnid = os.path.basename(member.name)[:-len(".tar")]
        with tarfile.open(fileobj=io.BytesIO(outer.extractfile(member).read()), mode="r:") as inner:
          for image in inner:
            if image.isfile():
              yield os.path.basename(image.name), inner.extractfile(image).read(), wnid
    return
  train = os.path.join(source, "train")
  for wnid in sources.list_dirs(train):
    for name in _image_files(os.path.join(train, wnid)):
      yield name, _read(os.path.join(train, wnid, name)), wnid


def _imagenet_validation(source: str):
  """(file name, bytes, wnid) of every validation image, from the tar, a flat val/ (ground truth
  by the number in the file name) or val/<wnid>/."""
  truth = imagenet_validation_wnids()

  def wnid_of(name: str) -> str:
    m = _VAL_NAME.search(name)
    if not m or not 1 <= int(m.group(1)) <= len(truth):
      raise DataNotPreparedError(f"{name}: not an ILSVRC2012 validation file name "
                                 "(ILSVRC2012_val_00000001.JPEG ... _00050000.JPEG)")
    return truth[int(m.group(1)) - 1]
  tar_path = os.path.join(source, "ILSVRC2012_img_val.tar")
  if os.path.isfile(tar_path):
    with tarfile.open(tar_path, mode="r|") as tar:
      for member in tar:
        if member.isfile():
          name = os.path.basename(member.name)
          yield name, tar.extractfile(member).read(), wnid_of(name)
    return
  val = next(os.path.join(source, d) for d in ("val", "validation") if os.path.isdir(os.path.join(source, d)))
  class_dirs = sources.list_dirs(val)
  if class_dirs:
    for wnid in class_dirs:
      for name in _image_files(os.path.join(val, wnid)):
        yield name, _read(os.path.join(val, wnid, name)), wnid
  else:
    for name in _image_files(val):
      yield name, _read(os.path.join(val, name)), wnid_of(name)


def _imagenet_splits(source: str) -> dict:
  if not os.path.isdir(source):
    raise LmimError(f"--source {source} is not a directory (expected one holding ILSVRC2012_img_train.tar "
                    "and ILSVRC2012_img_val.tar, or train/ and val/)")
  found = {}
  if os.path.isfile(os.path.join(source, "ILSVRC2012_img_train.tar")) or os.path.isdir(os.path.join(source, "train")):
    found["train"] = _imagenet_train
  if (os.path.isfile(os.path.join(source, "ILSVRC2012_img_val.tar"))
      or any(os.path.isdir(os.path.join(source, d)) for d in ("val", "validation"))):
    found["validation"] = _imagenet_validation
  if not found:
    raise LmimError(f"--source {source} holds neither ILSVRC2012_img_train.tar / ILSVRC2012_img_val.tar "
                    "nor train/<wnid>/ / val/")
  return found


###################################################################################################
# Builders: TFDS GeneratorBasedBuilders defined here, never registered (no name clash with TFDS's).
###################################################################################################


with tfds.core.registered.skip_registration():

  class ImageNetFromSource(tfds.core.GeneratorBasedBuilder):
    """TFDS's imagenet2012 5.1.0 layout, written from ILSVRC2012 files without TensorFlow."""
    name = IMAGENET
    VERSION = tfds.core.Version(IMAGENET_VERSION)

    def __init__(self, *, source: str, **kwargs):
      self.source = source
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, description="ILSVRC2012 (ImageNet-1k), written by lmim-prepare.",
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(encoding_format="jpeg"),
              "label": tfds.features.ClassLabel(names=imagenet_classes()),
              "file_name": tfds.features.Text()}),
          supervised_keys=("image", "label"), homepage="https://image-net.org/")

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing is downloaded
      return {split: self._generate_examples(reader) for split, reader in _imagenet_splits(self.source).items()}

    def _generate_examples(self, reader):
      for name, data, wnid in reader(self.source):
        yield name, {"image": rgb_jpeg(data), "label": wnid, "file_name": name}

  class FolderDataset(tfds.core.GeneratorBasedBuilder):
    """An image folder (one subfolder per class, per split) as a TFDS array_record dataset; a
    subclass per dataset name (`folder_builder`) sets `name`."""
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, source: str, **kwargs):
      self.source = source
      self.listing = sources.list_folder(source)
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, description=f"Images from {self.source}, written by lmim-prepare.",
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(None, None, self.listing.channels)),
              "label": tfds.features.ClassLabel(names=self.listing.classes),
              "file_name": tfds.features.Text()}),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(files, labels)
              for split, (files, labels) in self.listing.splits.items()}

    def _generate_examples(self, files, labels):
      for path, label in zip(files, labels):
        data, _ = _lossless(_read(path), self.listing.channels)
        name = os.path.relpath(path, self.source)
        yield name, {"image": data, "label": int(label), "file_name": name}


def folder_builder(name: str, **kwargs) -> FolderDataset:
  with tfds.core.registered.skip_registration():
    cls = type(f"FolderDataset_{name}", (FolderDataset,), {"name": name, "__module__": __name__})
  return cls(**kwargs)


def _build(builder, what: str) -> str:
  where = builder.data_dir
  if builder.is_prepared():
    log.info("%s is already prepared in %s; nothing to do.", what, where)
    return os.fspath(where)
  t0 = time.perf_counter()
  log.info("Preparing %s in %s ...", what, where)
  with contextlib.redirect_stdout(io.StringIO()):  # TFDS's "Downloading and preparing" lines: untrue here
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  counts = ", ".join(f"{s} {v.num_examples:,}" for s, v in sorted(builder.info.splits.items()))
  log.info("Prepared %s (%s examples) in %.0f s: %s.", what, counts, time.perf_counter() - t0, where)
  return os.fspath(where)


def prepare_imagenet(source: str, data_dir: str | None = None) -> str:
  """Write ILSVRC2012 from `source` as TFDS imagenet2012 5.1.0 into the data directory."""
  _imagenet_splits(source)  # a bad --source is one line before anything is written
  return _build(ImageNetFromSource(source=source, data_dir=location.data_dir(data_dir),
                                   file_format="array_record"), IMAGENET)


def prepare_folder(name: str, source: str, data_dir: str | None = None) -> str:
  """Write the image folder `source` as TFDS dataset `name` (1.0.0) into the data directory."""
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
    raise LmimError(f"dataset name {name!r} is invalid: use lower-case letters, digits and '_', "
                    "starting with a letter")
  if name in tfds.list_builders(with_community_datasets=False):
    raise LmimError(f"dataset name {name!r} is TFDS's own dataset; choose another name (e.g. {name}_images)")
  if not os.path.isdir(os.path.expanduser(source)):
    raise LmimError(f"--source {source} is not a directory (expected <root>/<split>/<class>/* or "
                    "<root>/<class>/*)")
  return _build(folder_builder(name, source=os.path.expanduser(source), data_dir=location.data_dir(data_dir),
                               file_format="array_record"), name)


def main(argv=None) -> int:
  """The `lmim-prepare` command."""
  parser = argparse.ArgumentParser(prog="lmim-prepare", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="kind", required=True)
  p = sub.add_parser(IMAGENET, help="ILSVRC2012 tars or folders -> TFDS imagenet2012 (array_record)")
  p.add_argument("--source", required=True, help="folder with the ILSVRC2012 tars, or train/ and val/")
  p.add_argument("--data_dir", default=None, help=f"default: ${location.ENV}, else ~/tensorflow_datasets")
  p = sub.add_parser("folder", help="an image folder (class subfolders) -> a TFDS dataset NAME")
  p.add_argument("name", help="the dataset name configs will use (input.data=NAME)")
  p.add_argument("--source", required=True, help="<root>/<split>/<class>/* or <root>/<class>/*")
  p.add_argument("--data_dir", default=None, help=f"default: ${location.ENV}, else ~/tensorflow_datasets")
  args = parser.parse_args(argv)
  from lmim.metrics_writer import console_logging  # pylint: disable=import-outside-toplevel
  console_logging()
  try:
    if args.kind == IMAGENET:
      where = prepare_imagenet(args.source, args.data_dir)
    else:
      where = prepare_folder(args.name, args.source, args.data_dir)
  except LmimError as e:
    print(f"lmim: error: {e}", file=sys.stderr)
    return 2
  print(where)
  return 0


if __name__ == "__main__":
  sys.exit(main())
