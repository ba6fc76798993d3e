"""Environment adapters, one module per backend; installed as ``esrl.envs``.

Backends are imported lazily: listing or registering ids never imports Brax or Craftax.
"""

from __future__ import annotations

from collections.abc import Callable


def register_builtins(register: Callable[..., None]) -> None:
    """Register every built-in environment id with ``register(id, entry_point, **kw)``."""
    from esrl.envs import brax, craftax, gymnax, llm

    for name in gymnax.names():
        register(f"gymnax/{name}", "esrl.envs.gymnax:make_gymnax", name=name)
    for name in brax.NAMES:
        register(f"brax/{name}", "esrl.envs.brax:make_brax", name=name)
    for name in craftax.NAMES:
        register(f"craftax/{name}", "esrl.envs.craftax:make_craftax", name=name)
    llm.register_builtins(register)
