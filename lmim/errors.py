"""Errors meant for people: one line that names the field, the value and what is valid.

Raised before anything is compiled or written, so a bad config never costs a compile or
touches a checkpoint. Entry points print `str(err)` alone (no traceback) for these.
"""


def first_line(err: BaseException) -> str:
  """The first line of an exception's message (its type name when empty): libraries' multi-line
  errors (TFDS, TensorStore) shortened to fit a one-line message."""
  return (str(err).strip().splitlines() or [type(err).__name__])[0]


class LmimError(ValueError):
  """Base class: a problem with the user's input, explained in one line."""


_NO_VALUE = object()


class ConfigError(LmimError):
  """A config field holds a value that cannot work: `ConfigError(field, value, valid)`.

  A single argument is taken as the whole message, so libraries that rebuild an exception from
  its text (absl, ml_collections, pickling across processes) get a working error back.
  """
  what = "config.{field}={value!r} is invalid: {valid}"

  def __init__(self, field: str, value=_NO_VALUE, valid: str | None = None):
    self.field, self.value, self.valid = field, value, valid
    message = field if value is _NO_VALUE else self.what.format(field=field, value=value, valid=valid)
    super().__init__(message)

  def __reduce__(self):
    return type(self), (str(self),)


class ConfigArgumentError(ConfigError):
  """An argument after the config file's colon (`configs/x.py:row=...`) is unknown or invalid."""
  what = "config argument {field}={value!r} is invalid: {valid}"


class FlagError(ConfigError):
  """A command-line flag (not a config field) holds a value that cannot work."""
  what = "--{field}={value!r} is invalid: {valid}"


class DataNotPreparedError(LmimError):
  """A dataset is not on disk in a form we can read; the message says how to prepare it."""


class CheckpointError(LmimError):
  """A checkpoint is missing, incompatible with the config, or does not match the expected tree."""


class CheckpointReadError(CheckpointError):
  """A saved step exists but cannot be read (truncated or corrupt files): not an incompatibility."""


class CheckpointWriteError(CheckpointError):
  """Writing a checkpoint failed (full disk, quota, permissions); `reason` says why in words."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


class WorkdirError(LmimError):
  """The workdir cannot be written (permissions, a read-only or full filesystem, a host-local path
  in a multi-host job)."""


class NonFiniteError(LmimError):
  """Training produced a NaN or Inf; the message names the step and the quantity."""
