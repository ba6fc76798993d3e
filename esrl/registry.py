"""Environment registry: ``make``, ``register``, ``list_envs`` and entry-point plug-ins.

Ids look like ``gymnax/CartPole-v1``, ``brax/ant``, ``craftax/Craftax-Classic-Symbolic-v1``,
``llm/countdown``. Third-party packages register through the entry-point group
``esrl.envs``: each entry point names a callable that is called with no arguments and
registers its environments with `register` (or a module that registers them when it is
imported); one that fails is skipped with a warning naming it, so a broken package
never breaks `make` for the others.
"""

from __future__ import annotations

import difflib
import importlib
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from esrl.env import AutoReset, Environment

ENTRY_POINT_GROUP = "esrl.envs"


@dataclass(frozen=True)
class EnvSpec:
    """A registered environment."""

    id: str
    """The id passed to `make`."""
    entry_point: Callable[..., Any] | str
    """A class, a factory or ``"module:attr"`` returning an environment."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the entry point unless `make` overrides them."""


_REGISTRY: dict[str, EnvSpec] = {}
_builtins_loaded = False
_plugins_loaded = False
_loading = False


def register(
    id: str,
    entry_point: Callable[..., Any] | str,
    *,
    override: bool = False,
    **defaults,
) -> None:
    """Register ``id``; `make` calls ``entry_point(**defaults, **kwargs)``."""
    if not isinstance(id, str) or not all(id.partition("/")[::2]):
        raise ValueError(f"environment id {id!r} must look like 'family/Name-v0'")
    if not callable(entry_point) and not isinstance(entry_point, str):
        raise TypeError(
            f"entry_point for {id!r} must be a class, a factory or a 'module:attr' "
            f"string, got {entry_point!r}; for an environment object pass a factory "
            "such as `lambda: env`"
        )
    if isinstance(entry_point, str) and not entry_point.partition(":")[2]:
        raise ValueError(f"entry point {entry_point!r} must look like 'module:attr'")
    # Built-ins and plug-ins first: registered later, they would clash with (and
    # undo) a user's registration of the same id.
    _load_all()
    if id in _REGISTRY and not override:
        raise ValueError(
            f"{id!r} is already registered; pass override=True to replace it"
        )
    _REGISTRY[id] = EnvSpec(id, entry_point, dict(defaults))


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    importlib.import_module("esrl.envs").register_builtins(register)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            hook = ep.load()
            if not isinstance(hook, types.ModuleType):  # a module registers on import
                hook()
        except Exception as e:  # noqa: BLE001 - one broken package must not break make()
            warnings.warn(
                f"{ENTRY_POINT_GROUP} plug-in {ep.name!r} ({ep.value}) failed and was "
                f"skipped: {type(e).__name__}: {e}",
                stacklevel=2,
            )


def _load_all() -> None:
    """Built-ins, then plug-ins; the `register` calls they make skip this."""
    global _loading
    if _loading:
        return
    _loading = True
    try:
        _load_builtins()
        _load_plugins()
    finally:
        _loading = False


def list_envs() -> list[str]:
    """All registered ids, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def _resolve(entry_point: Callable[..., Any] | str) -> Callable[..., Any]:
    if callable(entry_point):
        return entry_point
    module, _, attr = entry_point.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def make(id: str, *, autoreset: bool = False, **kwargs) -> Environment:
    """Build a registered environment; ``autoreset=True`` wraps it in `AutoReset`."""
    ids = list_envs()
    if id not in _REGISTRY:
        family = id.partition("/")[0] + "/"
        if any(i.startswith(family) for i in ids):
            close = difflib.get_close_matches(id, ids, n=3, cutoff=0.4)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
        else:  # a user's id not registered yet: other families' ids are no help
            hint = f" No id is registered under {family!r}."
        raise KeyError(
            f"unknown environment id {id!r}.{hint} `esrl.list_envs()` lists them all; "
            "register your own with `esrl.register` (on the command line, "
            "`--plugin MODULE` imports the module that registers it)."
        )
    spec = _REGISTRY[id]
    try:
        env = as_environment(_resolve(spec.entry_point)(**{**spec.defaults, **kwargs}))
    except Exception as e:  # the message says what; the note says which id
        e.add_note(f"while esrl.make built {id!r} from {spec.entry_point!r}")
        raise
    return AutoReset(env) if autoreset else env


def as_environment(obj: Any) -> Environment:
    """Adapt an object with the gymnax 1.x or the older 5-tuple API to the protocol."""
    if isinstance(obj, Environment):
        return obj
    if isinstance(obj, type):  # its methods would be found on the class too
        raise TypeError(
            f"the class {obj.__name__} is not an environment: pass an instance, "
            f"{obj.__name__}(...)"
        )
    skipped = _skipped_wrapper(obj)
    if skipped is not None:
        raise TypeError(skipped)
    from esrl.envs.gymnax import GymnaxEnv
    from esrl.envs.legacy import LegacyEnv, is_legacy

    if is_legacy(obj):
        return LegacyEnv(obj)
    if all(hasattr(obj, a) for a in ("step_env", "reset_env", "default_params")):
        return GymnaxEnv(obj)
    if isinstance(obj, str):
        raise TypeError(
            f"{obj!r} is a string, not an environment: build a registered id with "
            f"esrl.make({obj!r})"
        )
    raise TypeError(
        f"{type(obj).__name__} is not an environment: it needs the gymnax API "
        "(reset_env, step_env, default_params, observation_space, action_space) "
        "or to subclass esrl.Environment"
    )


def _skipped_wrapper(obj: Any) -> str | None:
    """Why ``obj`` cannot be adapted if it is a wrapper the adapters would bypass.

    gymnax's wrappers (and others built alike) change ``step`` and ``reset`` only,
    which auto-reset, and forward ``step_env`` and ``reset_env`` through
    ``__getattr__`` to the environment they wrap: the adapters, which call those,
    would skip the change (sticky actions, a flattened observation) without a word.
    """
    cls = type(obj)
    if hasattr(cls, "step_env") or not hasattr(obj, "step_env"):
        return None  # its own step_env, or none at all
    changed = ("step", "reset", "observation_space", "action_space")
    if not any(hasattr(cls, name) for name in changed):
        return None  # forwards everything: the adapters see what it would do
    held = [a for a in ("_env", "env") if a in getattr(obj, "__dict__", {})]
    inner = f" ({cls.__name__}(...).{held[0]})" if held else ""
    return (
        f"{cls.__name__} forwards step_env and reset_env to the environment it wraps, "
        f"so esrl would skip its own step and reset; pass the inner environment{inner} "
        "and make the change an esrl.Wrapper"
    )
