"""tests/tiny.py's config as a config file, for runs through the command line and launch/local.sh:

    python -m lmim.train --config tests/helpers/tiny_cli_config.py[:method] --workdir DIR
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny import tiny_config  # pylint: disable=wrong-import-position


def get_config(arg=None):
  return tiny_config(arg or "latent_mim")
