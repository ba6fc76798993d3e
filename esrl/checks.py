"""``check_env``: tell a user exactly what is wrong with a plugged-in environment.

Two passes. First shapes only (``jax.eval_shape``, nothing compiled): observations
against ``observation_space``, scalar float reward, scalar bool flags, a state and an
``info`` whose structure survives a step. Then values, with reset and step compiled
once each under ``jit(vmap(...))`` on a batch whose first two members share their key
and action (so determinism is checked in the same call): observations inside their
space, sampled actions accepted (`sample_space`: finite where a Box is unbounded),
identical transitions for identical keys. Dtypes are compared as JAX makes them: a
float64 space holds float32 observations unless x64 is enabled.

`require` is the one-line range check that every config's ``__post_init__`` uses,
`require_type` its type check (a float count failed deep inside jit, a string flag was
truthy); `is_int` the integer test behind the library's "must be an int" errors.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from esrl import spaces
from esrl.env import Environment, Wrapper

SEED = "an integer in [0, 2**32)"
"""The rule of random seeds: jax.random.PRNGKey keeps a seed's low 32 bits, so 2**32
would silently be seed 0."""
RULES = {
    ">= 1": lambda v: v >= 1,
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in (0, 1]": lambda v: 0 < v <= 1,
    "finite": math.isfinite,
    SEED: lambda v: is_int(v) and 0 <= v < 2**32,
}
"""The ranges `require` checks, by the words its error message uses."""


def require(config: Any, rule: str, *names: str) -> None:
    """Raise "<name> must be <rule>, got <value>" for the first of ``names`` to break it."""
    for name in names:
        require_value(name, getattr(config, name), rule)


TYPES = {
    "an int": lambda v: is_int(v),
    "a number": lambda v: isinstance(v, Real | jax.Array) and not _is_bool(v),
    "True or False": lambda v: _is_bool(v),
}
"""The types `require_type` checks, by the words its error message uses."""


def require_type(config: Any, kind: str, *names: str, hint: str = "") -> None:
    """Raise TypeError "<name> must be <kind>, got <value>" (+ ``hint``) for the first
    of ``names`` whose value is not of ``kind`` (a key of `TYPES`)."""
    for name in names:
        value = getattr(config, name)
        if not TYPES[kind](value):
            if kind == "an int" and isinstance(value, float) and value.is_integer():
                hint = f"; write {int(value)}{hint}"
            raise TypeError(f"{name} must be {kind}, got {value!r}{hint}")


def require_hashable(env: Any) -> None:
    """Refuse an unhashable environment: jit takes it as a static argument."""
    try:
        hash(env)
    except TypeError:
        raise TypeError(
            "the environment must be hashable (jit takes it as a static argument), "
            f"and a {type(env).__name__} is not; declare it @dataclass(frozen=True) "
            "with hashable fields, or @dataclass(eq=False)"
        ) from None


def require_value(name: str, value: Any, rule: str) -> None:
    """`require` for a value that is not a config's field (a function's argument)."""
    if not RULES[rule](value):
        raise ValueError(f"{name} must be {rule}, got {value}")


def require_env_id(env: Any, trainer: str) -> None:
    """A run spec's ``env`` is an id (it is stored in the checkpoint's JSON metadata),
    and not a language-model task, which the trainers' policies cannot learn."""
    if not isinstance(env, str):
        raise TypeError(
            f"env is the environment id, a str (got a {type(env).__name__}); train on "
            f"an environment object with {trainer}(spec, DIR, env=...)"
        )
    if env.startswith("llm/"):  # a run "succeeded" with eval return 0
        raise ValueError(
            f"{env} is a language-model task: the small MLP and recurrent policies of "
            f"esrl train and {trainer}() would have to learn language from scratch, one "
            "token per step; fine-tune the shipped language model with "
            "scripts/train_countdown.py or esrl.envs.llm.finetune (README: LLM reasoning)"
        )


def broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to exactly ``target``."""
    try:
        return np.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
    except ValueError:
        return False


def is_int(x: Any) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_bool(x: Any) -> bool:
    return isinstance(x, (bool, np.bool_))


_BATCH = 3  # members 0 and 1 share key and action, member 2 differs
# Floats of members 0 and 1 may differ by rounding (as on a GPU), not more.
_RTOL, _ATOL = 1e-4, 1e-6
# check_env runs a handful of steps, so compile time is all that matters: XLA's backend
# optimisations off compile Craftax's step ~3x faster on CPU.
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


class EnvCheckError(ValueError):
    """An environment breaks the esrl protocol; the message says what and where."""


def check_env(
    env: Any, params: Any = None, key: jax.Array | None = None, num_steps: int = 4
) -> None:
    """Reset and step ``env`` under jit and vmap; raise `EnvCheckError` on problems.

    Args:
        env: an `esrl.Environment`, or a raw gymnax / 5-tuple (legacy) environment.
        params: environment parameters; ``env.default_params`` when None.
        key: PRNG key for resets, steps and action samples; ``key(0)`` when None.
        num_steps: steps taken after the reset (step is compiled once).
    """
    env = _adapt(env)
    name = _label(env)
    try:
        require_hashable(env)
    except TypeError as e:
        _raise(name, [str(e)])
    params = env.default_params if params is None else params
    key = jax.random.key(0) if key is None else key
    obs_space = _call(
        name, "observation_space", env.observation_space, params, jit=False
    )
    act_space = _call(name, "action_space", env.action_space, params, jit=False)
    problems = _space_problems(name, obs_space, act_space)
    _raise(name, problems)
    _raise(name, _shape_problems(env, params, key, obs_space, act_space))
    _raise(name, _value_problems(env, params, key, obs_space, act_space, num_steps))


def _adapt(env: Any) -> Environment:
    from esrl.registry import as_environment

    try:
        return as_environment(env)
    except TypeError as e:
        raise EnvCheckError(str(e)) from e


def _label(env: Environment) -> str:
    """``env.name`` inside its wrappers' names (``Scale(AutoReset(Walk))``)."""
    # A Wrapper reports its env's name, but the problem may lie in the wrapper.
    if isinstance(env, Wrapper) and type(env).name is Wrapper.name:
        return f"{type(env).__name__}({_label(env.env)})"
    return env.name


def _raise(name: str, problems: list[str]) -> None:
    if len(problems) == 1:
        raise EnvCheckError(problems[0])
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise EnvCheckError(
            f"{name} failed check_env with {len(problems)} problems:\n{lines}"
        )


def _call(name: str, where: str, fn, *args, jit: bool = True) -> Any:
    """Call ``fn``; an exception becomes an `EnvCheckError` naming ``name.where``."""
    try:
        return fn(*args)
    except EnvCheckError:
        raise
    except Exception as e:  # re-raised below with the environment's name
        message = str(e).strip().splitlines()
        detail = message[0][:300] if message else ""
        how = "failed under jax.jit/vmap" if jit else "raised"
        raise EnvCheckError(
            f"{name}.{where} {how}: {type(e).__name__}: {detail}"
        ) from e


def _space_problems(name: str, obs_space: Any, act_space: Any) -> list[str]:
    problems = []
    for label, space in (("observation_space", obs_space), ("action_space", act_space)):
        bad = _foreign(space)
        if bad is not None:
            holding = "" if bad is space else f" holding {bad!r}"
            kind = f"{type(bad).__module__}.{type(bad).__qualname__}"
            problems.append(
                f"{name}.{label} returned {space!r}{holding}: a {kind} is not an "
                "esrl.spaces space; return an esrl.spaces Box, Discrete, Dict or Tuple"
            )
            continue
        for where, box in _boxes(space, label):
            problem = _box_problem(box)
            if problem is not None:
                problems.append(f"{name}.{where}: Box {problem}")
    return problems


def _boxes(space: Any, label: str):
    """Yield ``(label, Box)`` for every Box in ``space``, following Dict and Tuple."""
    if isinstance(space, spaces.Dict):
        for k, sub in space.spaces.items():
            yield from _boxes(sub, f"{label}[{k!r}]")
    elif isinstance(space, spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            yield from _boxes(sub, f"{label}[{i}]")
    elif isinstance(space, spaces.Box):
        yield label, space


def _box_problem(box: spaces.Box) -> str | None:
    """What is wrong with a Box's shape or bounds (later checks rely on them)."""
    shape = box.shape
    if not isinstance(shape, (tuple, list)) or not all(map(is_int, shape)):
        return f"shape {shape!r} must be a tuple of ints, such as (4,)"
    for side in ("low", "high"):
        bound = np.shape(getattr(box, side))
        if not broadcasts_to(bound, shape):
            return (
                f"{side} has shape {bound}, which does not broadcast to the Box "
                f"shape {tuple(shape)}"
            )
    return None


def _foreign(space: Any) -> Any:
    """The first part of ``space`` that is not an esrl (gymnax) space, or None."""
    # A gymnasium space has sample and contains too, but neither works under jit.
    if isinstance(space, spaces.Dict):
        parts = list(space.spaces.values())
    elif isinstance(space, spaces.Tuple):
        parts = list(space.spaces)
    else:
        return None if isinstance(space, spaces.Space) else space
    return next((p for p in map(_foreign, parts) if p is not None), None)


def _leaves(space: Any, obs: Any, path: str):
    """Yield ``(path, leaf space, leaf observation)``, following Dict and Tuple.

    Where the structure differs from the space, a message takes the observation's place.
    """
    if isinstance(space, spaces.Dict):
        if not isinstance(obs, Mapping) or set(obs) != set(space.spaces):
            want = f"observation_space says keys {sorted(space.spaces)}"
            got = (
                f"has keys {sorted(obs)}"
                if isinstance(obs, Mapping)
                else f"is a {type(obs).__name__}, not a dict"
            )
            yield path, space, f"{got}, but {want}"
            return
        for k, sub in space.spaces.items():
            yield from _leaves(sub, obs[k], f"{path}[{k!r}]")
    elif isinstance(space, spaces.Tuple):
        if not isinstance(obs, (tuple, list)) or len(obs) != len(space.spaces):
            yield (
                path,
                space,
                f"is a {type(obs).__name__}"
                + (f" of {len(obs)}" if isinstance(obs, (tuple, list)) else "")
                + f", but observation_space says a tuple of {len(space.spaces)}",
            )
            return
        for i, (sub, o) in enumerate(zip(space.spaces, obs)):
            yield from _leaves(sub, o, f"{path}[{i}]")
    else:
        yield path, space, obs


def _obs_shape_problems(where: str, obs: Any, space: Any) -> list[str]:
    problems = []
    for path, sub, leaf in _leaves(space, obs, "observation"):
        if isinstance(leaf, str):
            problems.append(f"{where}: {path} {leaf}")
            continue
        if not hasattr(leaf, "shape"):
            problems.append(f"{where}: {path} is a {type(leaf).__name__}, not an array")
            continue
        # as JAX makes it: a float64 space holds float32 arrays unless x64 is on
        want_dtype = jax.dtypes.canonicalize_dtype(sub.dtype)
        want_shape = tuple(sub.shape)
        if tuple(leaf.shape) != want_shape:
            problems.append(
                f"{where}: {path} has shape {tuple(leaf.shape)}, but "
                f"observation_space says {want_shape}"
            )
        if jnp.dtype(leaf.dtype) != want_dtype:
            problems.append(
                f"{where}: {path} has dtype {jnp.dtype(leaf.dtype).name}, but "
                f"observation_space says {want_dtype.name}"
            )
    return problems


def _scalar_problems(where: str, label: str, x: Any, kind: str) -> list[str]:
    if not hasattr(x, "shape"):
        return [f"{where}: {label} is a {type(x).__name__}, not a jax array"]
    problems = []
    if tuple(x.shape) != ():
        problems.append(
            f"{where}: {label} has shape {tuple(x.shape)}, but must be a scalar (shape ())"
        )
    ok = (
        jnp.issubdtype(x.dtype, jnp.floating)
        if kind == "float"
        else x.dtype == jnp.bool_
    )
    if not ok:
        want = "a float (float32)" if kind == "float" else "bool"
        problems.append(
            f"{where}: {label} has dtype {jnp.dtype(x.dtype).name}, but must be {want}"
        )
    return problems


def _structure(tree: Any) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [(tuple(x.shape), str(x.dtype)) for x in leaves]


def _shape_problems(env, params, key, obs_space, act_space) -> list[str]:
    """Structural checks on abstract values (tracing only, nothing compiled)."""
    name = _label(env)
    out = _call(name, "reset", jax.eval_shape, env.reset, key, params)
    if not isinstance(out, tuple) or len(out) != 2:
        size = f"{len(out)} values" if isinstance(out, tuple) else _kind(out)
        return [f"{name}.reset returned {size}; it must return (obs, state)"]
    obs, state = out
    problems = _obs_shape_problems(f"{name}.reset", obs, obs_space)
    sample = functools.partial(sample_space, space=act_space)
    action = _call(name, "action_space.sample", jax.eval_shape, sample, key)
    out = _call(name, "step", jax.eval_shape, env.step, key, state, action, params)
    if not isinstance(out, tuple) or len(out) != 6:
        size = f"{len(out)} values" if isinstance(out, tuple) else _kind(out)
        message = (
            f"{name}.step returned {size}; it must return (obs, state, reward, "
            "terminated, truncated, info). For the older (obs, state, reward, done, "
            "info) API name the methods step_env and reset_env (with a params "
            "argument) and do not subclass esrl.Environment: esrl adapts that API"
        )
        return problems + [message]
    obs, next_state, reward, terminated, truncated, info = out
    where = f"{name}.step"
    problems += _obs_shape_problems(where, obs, obs_space)
    problems += _scalar_problems(where, "reward", reward, "float")
    problems += _scalar_problems(where, "terminated", terminated, "bool")
    problems += _scalar_problems(where, "truncated", truncated, "bool")
    if _structure(next_state) != _structure(state):
        problems.append(
            f"{where}: the state it returns differs in structure, shape or dtype from "
            "the state reset returns; lax.scan needs them identical"
        )
        return problems
    if not isinstance(info, dict):
        return problems + [
            f"{where}: info is a {type(info).__name__}, but must be a dict"
        ]
    later = _call(
        name, "step", jax.eval_shape, env.step, key, next_state, action, params
    )
    if _structure(later[5]) != _structure(info):
        problems.append(
            f"{where}: info changes structure between steps; keep its keys, shapes and dtypes fixed"
        )
    return problems


def sample_space(key: jax.Array, space: Any) -> Any:
    """A random element of ``space``, finite even where a Box is unbounded.

    gymnax's ``Box.sample`` draws ``uniform(low, high)``: NaN or inf on an infinite side.
    Such sides are drawn as gymnasium draws them: a normal where both are infinite,
    ``low + exponential`` or ``high - exponential`` where one is.
    """
    if isinstance(space, spaces.Dict):
        keys = jax.random.split(key, len(space.spaces))
        return {
            k: sample_space(kk, s) for kk, (k, s) in zip(keys, space.spaces.items())
        }
    if isinstance(space, spaces.Tuple):
        keys = jax.random.split(key, len(space.spaces))
        return tuple(sample_space(k, s) for k, s in zip(keys, space.spaces))
    if not isinstance(space, spaces.Box) or all(map(_finite, (space.low, space.high))):
        return space.sample(key)
    shape = tuple(space.shape)
    low, high = (
        jnp.broadcast_to(jnp.asarray(b, float), shape) for b in (space.low, space.high)
    )
    has_low, has_high = jnp.isfinite(low), jnp.isfinite(high)
    k_uniform, k_normal, k_exp = jax.random.split(key, 3)
    both = has_low & has_high
    uniform = jax.random.uniform(
        k_uniform,
        shape,
        minval=jnp.where(both, low, 0),
        maxval=jnp.where(both, high, 1),
    )
    normal = jax.random.normal(k_normal, shape)
    tail = jax.random.exponential(k_exp, shape)
    x = jnp.where(has_low, low + tail, jnp.where(has_high, high - tail, normal))
    return jnp.where(both, uniform, x).astype(space.dtype)


def _finite(bound: Any) -> bool:
    """Whether a Box bound is known to be finite everywhere (traced: not known)."""
    try:
        return bool(np.isfinite(np.asarray(bound, float)).all())
    except jax.errors.TracerArrayConversionError:
        return False


def _kind(out: Any) -> str:
    """``out`` described for a message: a list of n values, or a single value."""
    if isinstance(out, list):
        return f"a list of {len(out)} values (return a tuple)"
    return "a single array" if hasattr(out, "shape") else f"a {type(out).__name__}"


def _value_problems(env, params, key, obs_space, act_space, num_steps) -> list[str]:
    """Run the compiled batched reset and steps; check values and determinism."""
    name = _label(env)
    jit = functools.partial(jax.jit, compiler_options=_COMPILER_OPTIONS)
    reset = jit(jax.vmap(env.reset, in_axes=(0, None)))
    step = jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    sample = jit(jax.vmap(functools.partial(sample_space, space=act_space)))
    key, sub = jax.random.split(key)
    obs, state = _call(name, "reset", reset, _pair_keys(sub), params)
    problems = _obs_value_problems(
        f"{name}.reset", obs, obs_space, np.ones(_BATCH, bool)
    )
    problems += _determinism_problems(
        f"{name}.reset", {"observation": obs, "state": state}
    )
    state = _resync(state)
    alive = np.ones(_BATCH, bool)
    for _ in range(num_steps):
        if problems or not alive.any():
            break
        key, k_act, k_step = jax.random.split(key, 3)
        action = _call(name, "action_space.sample", sample, _pair_keys(k_act))
        obs, state, reward, terminated, truncated, info = _call(
            name, "step", step, _pair_keys(k_step), state, action, params
        )
        where = f"{name}.step"
        problems += _obs_value_problems(where, obs, obs_space, alive)
        problems += _determinism_problems(
            where,
            {
                "observation": obs,
                "state": state,
                "reward": reward,
                "terminated": terminated,
                "truncated": truncated,
                "info": info,
            },
        )
        state = _resync(state)
        if np.isnan(np.asarray(reward)[alive]).any():
            problems.append(f"{where}: reward is NaN")
        alive &= ~(np.asarray(terminated) | np.asarray(truncated))
    return problems


def _pair_keys(key: jax.Array) -> jax.Array:
    """``_BATCH`` keys; the first two are equal."""
    keys = jax.random.split(key, _BATCH)
    return keys.at[1].set(keys[0])


def _determinism_problems(where: str, outputs: dict[str, Any]) -> list[str]:
    for label, tree in outputs.items():
        paths = jax.tree_util.tree_flatten_with_path(tree)[0]
        for path, x in paths:
            x = np.asarray(jax.random.key_data(x) if _is_key(x) else x)
            if not _same(x[0], x[1]):
                at = jax.tree_util.keystr(path)
                message = (
                    f"{where}: {label}{at} differs between two calls with the same key, "
                    "state and action; draw all randomness from the key argument"
                )
                return [message]
    return []


def _resync(state: Any) -> Any:
    """Member 1 continues from member 0's state, so that rounding cannot compound.

    Leaves come back strongly typed: a weak-typed leaf of reset's state that step
    returns strong (Craftax has one) would compile step a second time.
    """

    def resync(x):
        x = x.at[1].set(x[0])
        return x if _is_key(x) else jax.lax.convert_element_type(x, x.dtype)

    return jax.tree.map(resync, state)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal, floats up to rounding (Brax ant's were not bit-identical on an H100)."""
    if np.issubdtype(a.dtype, np.inexact):
        return np.allclose(a, b, rtol=_RTOL, atol=_ATOL, equal_nan=True)
    return np.array_equal(a, b)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _obs_value_problems(
    where: str, obs: Any, space: Any, alive: np.ndarray
) -> list[str]:
    problems = []
    for i in [i for i in (0, 2) if alive[i]]:  # member 1 duplicates member 0
        member = jax.tree.map(lambda x, i=i: x[i], obs)
        for path, sub, leaf in _leaves(space, member, "observation"):
            problem = _leaf_value_problem(path, sub, np.asarray(leaf))
            if problem:
                problems.append(f"{where}: {problem}")
        if problems:
            break
    return problems


def _leaf_value_problem(path: str, space: Any, x: np.ndarray) -> str | None:
    if isinstance(space, spaces.Box):
        low = np.broadcast_to(np.asarray(space.low, dtype=np.float64), x.shape)
        high = np.broadcast_to(np.asarray(space.high, dtype=np.float64), x.shape)
        for bad, bound, word in ((x < low, low, "below"), (x > high, high, "above")):
            if bad.any():
                idx = tuple(int(j) for j in np.argwhere(bad)[0])
                at = "[" + ", ".join(map(str, idx)) + "]" if idx else ""
                side = "low" if word == "below" else "high"
                return (
                    f"{path}{at} = {x[idx]} is {word} observation_space.{side}{at} = "
                    f"{bound[idx]}"
                )
        if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any():
            return f"{path} contains NaN"
    if not bool(space.contains(jnp.asarray(x))):
        return f"{path} = {x} is not contained in observation_space {space!r}"
    return None
