"""Errors meant for people: one line that names the field, the value and what is valid.

Raised before anything is compiled or written, so a bad config never costs a compile or
touches a checkpoint. Entry points print `str(err)` alone (no traceback) for these.
"""


class LmimError(ValueError):
  """Base class: a problem with the user's input, explained in one line."""


class ConfigError(LmimError):
  """A config field holds a value that cannot work."""

  def __init__(self, field: str, value, valid: str):
    self.field, self.value, self.valid = field, value, valid
    super().__init__(f"config.{field}={value!r} is invalid: {valid}")


class DataNotPreparedError(LmimError):
  """A dataset is not on disk in a form we can read; the message says how to prepare it."""


class CheckpointError(LmimError):
  """A checkpoint is missing, incompatible with the config, or does not match the expected tree."""
