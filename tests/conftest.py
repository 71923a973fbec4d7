"""Test session setup: 8 virtual CPU devices (before any backend use) and fixture locations."""
import os
import pathlib

import jax

jax.config.update("jax_num_cpu_devices", 8)

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Fixtures are read from ../shared beside the project root, never copied in.
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"
