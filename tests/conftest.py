"""Test session setup: 8 virtual CPU devices (before any backend use), the compile cache, the
repository root and a free port; shared helpers are in tests/helpers/ (on the path via pytest.ini)."""
import os
import pathlib
import socket

import jax

jax.config.update("jax_num_cpu_devices", 8)
# Many tests compile the same tiny programs; a persistent cache turns repeats into lookups.
jax.config.update("jax_compilation_cache_dir", os.environ.get("LMIM_TEST_JAX_CACHE", "/tmp/lmim_test_jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
  """A TCP port nobody listens on now (for JAX's coordinator in multi-process tests)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
