"""Ahead-of-time compilation with esrl's per-executable XLA options.

Two CPU options, both measured side by side in one process (MLP 256x2, population
2048, 2-core CPU):

- XLA's YNNPACK fusion merges a matmul with the elementwise work around it into one
  subgraph. For EGGROLL's ``x @ W + (x @ a.T) @ b + bias`` that subgraph runs the
  shared matmul less efficiently than a stand-alone one; keeping YNNPACK to individual
  matmuls (``LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``) made eggroll rollouts ~25% faster
  and plain ones a little faster too.
- The tree-reduction rewriter splits every long row reduction into a stored product,
  a windowed sum and a final sum. EGGROLL's per-member ``x @ a.T`` (a dot product per
  member and layer) then costs three passes instead of one fused pass: ~100 against
  ~45 ms per 500 steps and layer in the profile. Without it, sums are accumulated in
  one pass (float32). The sums in these executables run over at most a population, a
  PPO batch or a layer's width; the test suite's exact and tolerance checks pass with it.

The options apply per executable, never to the rest of the process, and a jaxlib that
does not know one of them compiles with the others.

On a GPU, one process-wide flag, for safety rather than speed (`avoid_triton_gemm`).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable

import jax

CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "xla_disable_hlo_passes": "tree_reduction_rewriter",
}
"""Compiler options used on the CPU backend (see the module docstring)."""


def compile_lowered(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
    """``lowered.compile()`` with `compiler_options`."""
    return lowered.compile(compiler_options() or None)


@functools.cache
def _known_options() -> tuple[tuple[str, str], ...]:
    """The `CPU_OPTIONS` this jaxlib knows, on the CPU backend; () on others."""
    if jax.default_backend() != "cpu":
        return ()
    return tuple(_accepted(jax.jit(lambda x: x + 1).lower(0.0), CPU_OPTIONS).items())


def _accepted(lowered: jax.stages.Lowered, options: dict) -> dict:
    """Those of ``options`` that ``lowered`` compiles with."""
    options = dict(options)
    while options:
        try:
            lowered.compile(options)
            return options
        except jax.errors.JaxRuntimeError as err:
            # one unknown option must not cost the others (it names itself)
            unknown = [n for n in options if re.search(rf"\b{n}\b", str(err))]
            if not unknown:
                raise
            for name in unknown:
                del options[name]
    return options


def compiler_options() -> dict:
    """The `CPU_OPTIONS` this jaxlib knows, on the CPU backend; {} on others."""
    return dict(_known_options())


def aot(fn: Callable, *args, **jit_kwargs) -> jax.stages.Compiled:
    """``jax.jit(fn, **jit_kwargs)`` lowered for ``args`` and compiled (`compile_lowered`)."""
    return compile_lowered(jax.jit(fn, **jit_kwargs).lower(*args))


def jit(fn: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fn, **jit_kwargs)`` whose executables compile with `compiler_options`.

    For functions called with new shapes or static arguments (`aot` needs the
    arguments up front). The backend is asked at the first call, not at decoration.
    Called with traced arguments (inside another jit) it is an ordinary nested jit:
    options belong to the outermost program.
    """
    jitted = {}

    @functools.wraps(fn)
    def call(*args, **kwargs):
        leaves = jax.tree.leaves((args, kwargs))
        nested = any(isinstance(x, jax.core.Tracer) for x in leaves)
        if nested not in jitted:
            options = {} if nested else {"compiler_options": compiler_options()}
            jitted[nested] = jax.jit(fn, **options, **jit_kwargs)
        return jitted[nested](*args, **kwargs)

    return call


TRITON_GEMM = "xla_gpu_enable_triton_gemm"


def avoid_triton_gemm(environ: dict = os.environ) -> None:
    """Add ``--xla_gpu_enable_triton_gemm=false`` to XLA_FLAGS, unless it names it.

    jax 0.11.2's XLA aborts the whole process (a failed check in
    ``triton_tiling_propagation.cc``) compiling some EGGROLL and OpenAI-ES programs
    with its Triton GEMM fusion on a GPU (an H100: a trainer's generation at hidden 8,
    a width-256 OpenAI-ES rollout); without it GEMMs go to cuBLAS, which made the
    benchmark's plain MLP rollout 28% slower and left EGGROLL's ratio to it about
    where it was (README, Benchmark). XLA reads XLA_FLAGS when JAX starts its first
    backend, so ``import esrl`` calls this before any computation; a choice the user
    made (``--xla_gpu_enable_triton_gemm=true`` keeps Triton) is left alone, and the
    CPU backend ignores the flag.
    """
    default_flag(TRITON_GEMM, "false", environ)


def default_flag(name: str, value: str, environ: dict = os.environ) -> None:
    """Add ``--name=value`` to XLA_FLAGS in ``environ`` unless they set ``name`` already."""
    flags = environ.get("XLA_FLAGS", "")
    if not re.search(rf"--{name}(=|\s|$)", flags):
        environ["XLA_FLAGS"] = f"{flags} --{name}={value}".strip()
