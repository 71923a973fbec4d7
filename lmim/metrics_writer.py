"""Metrics out of the run: TensorBoard event files (tensorboardX, no TensorFlow needed), a JSONL
file (one line per write: {"step": ..., name: value}), and the console.

Only process 0 writes; the other processes get a writer that does nothing, so call sites need
no `if process_index == 0`.
"""
import json
import logging
import math
import os

import jax
import numpy as np

log = logging.getLogger("lmim")


def _plain(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


class MetricWriter:
  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)
      self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: dict):
    if not self.enabled:
      return
    row = {"step": int(step)}
    for k, v in scalars.items():
      v = _plain(v)
      row[k] = v
      if isinstance(v, (int, float)) and math.isfinite(v):
        self._tb.add_scalar(k, v, int(step))
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()

  def write_image(self, tag: str, image, step: int):
    """An (H, W, 3) uint8 or [0, 1] float image to TensorBoard."""
    if self.enabled:
      self._tb.add_image(tag, np.asarray(image), int(step), dataformats="HWC")

  def write_text(self, tag: str, text: str, step: int = 0):
    if self.enabled:
      self._tb.add_text(tag, text, step)

  def close(self):
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


_FORMATS = (("loss", ".4f"), ("sim_pred", ".3f"), ("sim_vis", ".3f"), ("sim_trg", ".3f"),
            ("std_pred", ".3f"), ("std_trg", ".3f"), ("lr", ".3e"), ("momentum", ".5f"),
            ("grad_norm", ".3e"), ("images_per_sec", ".1f"))
_SILENT = ("eta_sec", "loss_main", "sim_target")


def format_line(step: int, total: int, m: dict) -> str:
  """The console line: what a researcher scans for during pretraining (method-specific terms,
  e.g. CMAE's rec/con/pos, follow the common ones)."""
  parts = [f"step {step}/{total}"]
  known = {k for k, _ in _FORMATS}
  for key, fmt in _FORMATS:
    if key in m:
      parts.append(f"{key} {m[key]:{fmt}}")
  parts += [f"{k} {v:.4g}" for k, v in m.items() if k not in known and k not in _SILENT]
  if "eta_sec" in m:
    parts.append(f"eta {_hms(m['eta_sec'])}")
  return " | ".join(parts)


def _hms(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _formatter() -> logging.Formatter:
  return logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S")


def console_logging() -> logging.Logger:
  """lmim's INFO lines on stderr, once (absl's handler keeps the root logger at WARNING, and lmim's
  logger does not propagate to it)."""
  logger = logging.getLogger("lmim")
  logger.setLevel(logging.INFO)
  if not any(type(h) is logging.StreamHandler for h in logger.handlers):  # pylint: disable=unidiomatic-typecheck
    h = logging.StreamHandler()
    h.setFormatter(_formatter())
    logger.addHandler(h)
  logger.propagate = False
  return logger


def stop_file_logging() -> None:
  """Close the log file `file_logging` opened (lmim's lines go to the console only again)."""
  logger = logging.getLogger("lmim")
  for h in list(logger.handlers):
    if isinstance(h, logging.FileHandler):
      logger.removeHandler(h)
      h.close()


def file_logging(path: str) -> None:
  """Also write lmim's lines to `path` (one log file at a time: a previous one is closed)."""
  logger = console_logging()
  stop_file_logging()
  fh = logging.FileHandler(path)
  fh.setFormatter(_formatter())
  logger.addHandler(fh)
