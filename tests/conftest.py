"""One fresh JAX compilation cache for the test session.

Many tests compile the same programs (a run and its resume, a run's evaluation and its
reproduction, the same tiny policy in several files); a persistent compilation cache
turns every repeat into a load. The directory is new for each session and removed at
its end, so no test depends on an earlier run: the process that starts pytest makes it
before xdist starts its workers, which inherit it through the environment, as do the
subprocesses tests start. JAX writes an entry in place, so a worker reading an entry
the other worker is still writing gets a warning and compiles the program itself.

XLA's CPU backend compiles the tests' programs with LLVM optimisation level 0 (unless
XLA_FLAGS already sets one), inherited the same way: most of a test's time is compiling
programs it runs for a few tiny steps: two of the heaviest files took 75 s against 106 s
back to back on 2 cores. It changes how fast the machine code runs, not what it
computes; only the benchmark scripts time programs, and they never run under it.

On a GPU, float32 matmuls run at full precision here (JAX's default there is TF32, ~1e-3
relative): the tests compare programs with references, not speeds.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import jax

import esrl  # noqa: F401 - sets its XLA_FLAGS before any computation (esrl.xla)
from esrl import xla


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the session's first process
        config.jax_cache_dir = tempfile.mkdtemp(prefix="esrl-test-jax-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config.jax_cache_dir
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        xla.default_flag("xla_backend_optimization_level", "0")
    # set here too: jax may have read the environment before it was set
    jax.config.update(
        "jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"]
    )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_default_matmul_precision", "highest")


def pytest_unconfigure(config):
    if hasattr(config, "jax_cache_dir"):
        shutil.rmtree(config.jax_cache_dir, ignore_errors=True)
