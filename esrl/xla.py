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
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax

CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "xla_disable_hlo_passes": "tree_reduction_rewriter",
}
"""Compiler options used on the CPU backend (see the module docstring)."""


def compile_lowered(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
    """``lowered.compile()`` with those `CPU_OPTIONS` this jaxlib knows, on the CPU."""
    options = dict(CPU_OPTIONS) if jax.default_backend() == "cpu" else {}
    while options:
        try:
            return lowered.compile(options)
        except jax.errors.JaxRuntimeError as err:
            # one unknown option must not cost the others (it names itself)
            unknown = [n for n in options if re.search(rf"\b{n}\b", str(err))]
            if not unknown:
                raise
            for name in unknown:
                del options[name]
    return lowered.compile()


def aot(fn: Callable, *args, **jit_kwargs) -> jax.stages.Compiled:
    """``jax.jit(fn, **jit_kwargs)`` lowered for ``args`` and compiled (`compile_lowered`)."""
    return compile_lowered(jax.jit(fn, **jit_kwargs).lower(*args))
