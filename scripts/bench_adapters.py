"""Adapter overhead: each backend stepped raw and through its esrl adapter, side by side.

For every pair the same jitted ``lax.scan`` rollout (vmapped over ``num_envs``, random
actions, reward/done/observation sums carried so nothing is dead code) runs on the raw
library call and on the adapter; repeats alternate raw/adapter and the median is kept.
"Raw" is the library's pure step and the episode end it reports: gymnax ``step_env``
plus ``is_truncated``; Brax ``env.step`` (``done`` without a time limit); Craftax's
no-auto-reset ``step_env`` (``done`` with the time limit folded in).

    python scripts/bench_adapters.py --quick --out bench_adapters.json
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import esrl
from esrl.bench import unwritable
from esrl.logger import write_json_atomic


@dataclass(frozen=True)
class Case:
    """One backend measured raw and through the adapter."""

    env: str
    """The esrl id."""
    num_envs: int
    """Environments stepped together (vmap)."""
    steps: int
    """Scan length of one timed rollout."""


def _reduce(obs: Any) -> jax.Array:
    return sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(obs))


def _rollout(reset: Callable, step: Callable, sample: Callable, case: Case):
    """A jitted function ``key -> (reward sum, done count, obs sum)``."""

    def run(key):
        state = jax.vmap(reset)(jax.random.split(key, case.num_envs))

        def body(carry, key):
            state, totals = carry
            k_act, k_step = jax.random.split(key)
            actions = jax.vmap(sample)(jax.random.split(k_act, case.num_envs))
            keys = jax.random.split(k_step, case.num_envs)
            state, reward, done, obs = jax.vmap(step)(keys, state, actions)
            totals = totals + jnp.stack([reward.sum(), done.sum(), _reduce(obs)])
            return (state, totals), None

        carry = (state, jnp.zeros(3, jnp.float32))
        keys = jax.random.split(key, case.steps)
        return jax.lax.scan(body, carry, keys)[0][1]

    return jax.jit(run)


def _adapter_fns(env):
    def reset(key):
        return env.reset(key)[1]

    def step(key, state, action):
        obs, state, reward, terminated, truncated, _ = env.step(key, state, action)
        return state, reward, terminated | truncated, obs

    return reset, step


def _raw_fns(env):
    """Reset/step calling the wrapped library directly, as its own users would."""
    inner = env.env
    if env.name.startswith("brax/"):

        def step(key, state, action):
            state = inner.step(state, action)
            return state, state.reward, state.done > 0, state.obs

        return inner.reset, step
    params = env.default_params

    def reset(key):
        return inner.reset_env(key, params)[1]

    def step(key, state, action):
        obs, state, reward, done, _ = inner.step_env(key, state, action, params)
        if hasattr(inner, "is_truncated"):  # gymnax 1.x keeps the time limit apart
            done = done | inner.is_truncated(state, params)
        return state, reward, done, obs

    return reset, step


def _time(fn: Callable, key: jax.Array) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(key))
    return time.perf_counter() - start


def measure(case: Case, repeats: int) -> list[dict[str, Any]]:
    """Steps per second of raw and adapter rollouts for one case."""
    env = esrl.make(case.env)
    sample = env.action_space().sample
    fns = {
        "raw": _rollout(*_raw_fns(env), sample, case),
        "adapter": _rollout(*_adapter_fns(env), sample, case),
    }
    compile_s = {name: _time(fn, jax.random.key(0)) for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in fns.items():  # alternate so load drifts hit both alike
            times[name].append(_time(fn, jax.random.key(i + 1)))
    rows = []
    for name in fns:
        median = statistics.median(times[name])
        rows.append(
            {
                "env": case.env,
                "impl": name,
                "num_envs": case.num_envs,
                "steps": case.steps,
                "compile_s": round(compile_s[name], 2),
                "median_s": round(median, 5),
                "env_steps_per_s": round(case.num_envs * case.steps / median),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run every case, print a table with adapter/raw ratios, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches, 5 repeats")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else None
    if out and (problem := unwritable(out)):  # before measuring
        parser.error(f"--out {out}: {problem}")
    warnings.filterwarnings("ignore")
    n = 64 if args.quick else 256
    cases = [
        Case(
            "gymnax/CartPole-v1",
            1024 if args.quick else 4096,
            200 if args.quick else 500,
        ),
        Case("brax/ant", n, 50 if args.quick else 200),
        Case("craftax/Craftax-Classic-Symbolic-v1", n, 50 if args.quick else 200),
    ]
    repeats = 5 if args.quick else 9
    results, ratios = [], {}
    for case in cases:
        rows = measure(case, repeats)
        results += rows
        raw, adapter = (r["env_steps_per_s"] for r in rows)
        ratios[case.env] = round(adapter / raw, 3)
        for r in rows:
            print(
                f"{r['env']:<38} {r['impl']:<8} {r['env_steps_per_s']:>12,} steps/s "
                f"(compile {r['compile_s']:.1f} s)"
            )
        print(f"{case.env:<38} adapter/raw throughput = {ratios[case.env]:.3f}")
    if out:
        report = {"device": str(jax.devices()[0]), "results": results, "ratios": ratios}
        write_json_atomic(out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
