"""Throughput benchmark: plain inference vs EGGROLL vs OpenAI-ES vs PPO vs evosax.

Every method is compiled ahead of time (compile time recorded), then all methods of a
case are timed round-robin (one call of each per round), so a machine whose load
drifts slows them alike and the ratios of one run stay comparable; warm-up rounds are
dropped and the median is reported. ES methods time the real training step
(`esrl.train.ESTrainer.generation`: perturb, roll out, shape, update), ``plain`` the
same rollout with shared weights and no noise (the ceiling). For equal work per method,
ES rollouts use `FixedHorizon`: no episode ends early, so a generation is always
population x horizon environment steps. PPO rows are training steps per second.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Self

import jax
import jax.numpy as jnp

from esrl import xla
from esrl.env import Environment, Wrapper
from esrl.registry import make

METHODS = ("plain", "eggroll", "openai_es", "ppo", "evosax_open_es")


@dataclass(frozen=True)
class Case:
    """One benchmark configuration (environment, network, population)."""

    env: str = "gymnax/CartPole-v1"
    """Registry id of the environment."""
    kind: str = "mlp"
    """Policy torso: mlp, gru, mingru or lstm."""
    hidden: int = 256
    """Width of every hidden layer."""
    population: int = 2048
    """ES members per generation (PPO: parallel environments)."""
    horizon: int = 500
    """Steps per episode; every member runs all of them (`FixedHorizon`)."""
    num_layers: int = 2
    """Hidden layers (MLP 256x2 by default)."""


class Bench(NamedTuple):
    """A compiled method, ready to be timed."""

    method: str
    """One of `METHODS`."""
    rank: int | None
    """EGGROLL rank (None for the others)."""
    call: Callable[[], Any]
    """Runs one generation (or PPO update chunk); returns arrays to wait for."""
    env_steps: int
    """Environment steps one call takes."""
    population: int
    """Members (PPO: environments) of one call."""
    compile_s: float
    """Trace, lower and compile time."""
    xla_memory_mb: float | None
    """XLA's estimate of the call's live memory (arguments, outputs, temporaries)."""
    note: str = ""
    """Anything a reader of the row should know."""
    executable: Any = None
    """The compiled call, where there is one (its HLO names the ops of a profile)."""


class Skipped(NamedTuple):
    """A method that could not run here, and why."""

    method: str
    """One of `METHODS`."""
    note: str
    """Why it was skipped (written into its row)."""


class FixedHorizon(Wrapper):
    """Never terminates or truncates, so every member runs the rollout's whole horizon.

    A benchmark needs equal work per method: with real terminations the rollout stops
    early once all episodes end, and how early depends on the policy being measured.
    """

    def step(self, key, state, action, params=None):
        obs, state, reward, _, _, info = self.env.step(key, state, action, params)
        never = jnp.zeros((), bool)
        return obs, state, reward, never, never, info

    @property
    def name(self) -> str:
        return f"FixedHorizon({self.env.name})"


def aot(fn: Callable, *args) -> tuple[Callable, float, float | None]:
    """Compile ``jit(fn)`` for ``args``: (compiled, seconds, XLA memory estimate MB)."""
    start = time.perf_counter()
    compiled = xla.aot(fn, *args)
    seconds = time.perf_counter() - start
    try:
        m = compiled.memory_analysis()
        total = (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            + m.temp_size_in_bytes
            - m.alias_size_in_bytes
        )
        mb = total / 2**20
    except Exception:  # noqa: BLE001 - not every backend reports it
        mb = None
    return compiled, seconds, mb


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer >= 1, or a clear usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def unwritable(out: Path) -> str | None:
    """Why no file can be written to ``out``, or None (scripts ask before measuring)."""
    if out.is_dir():
        return "is a directory; give a FILE.json"
    try:
        tempfile.TemporaryFile(dir=out.parent).close()
    except OSError as err:
        return f"cannot write there ({err.strerror or err})"
    return None


def chunk_for(horizon: int, most: int = 32) -> int:
    """The largest divisor of ``horizon`` up to ``most``: no masked tail steps."""
    return max(d for d in range(1, min(most, horizon) + 1) if horizon % d == 0)


def device_description() -> str:
    """The accelerator (or CPU) the benchmark ran on, in words."""
    devices = jax.devices()
    d = devices[0]
    if d.platform == "cpu":
        cpu = platform.processor() or platform.machine()
        return f"cpu ({os.cpu_count()} cores, {cpu}), jax {jax.__version__}"
    return f"{d.device_kind} x{len(devices)} ({d.platform}), jax {jax.__version__}"


def env_for(case: Case) -> Environment:
    """The benchmark's environment (fixed horizon) for ``case``."""
    return FixedHorizon(make(case.env))


class MemorySampler:
    """Peak memory while a block runs: host RSS on CPU, device bytes in use on GPU."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        device = jax.devices()[0]
        self.device = device if device.platform != "cpu" else None
        self.kind = "device" if self.device is not None else "host_rss"
        self.peak = 0
        self._stop = threading.Event()

    def current(self) -> int:
        """Bytes in use now."""
        if self.device is not None:
            stats = self.device.memory_stats() or {}
            return int(stats.get("bytes_in_use", 0))
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval_s)

    def __enter__(self) -> Self:
        self.peak = self.current()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


class Timing(NamedTuple):
    """Measurements of one bench in a round-robin run."""

    times_s: list[float]
    """Wall-clock seconds of every kept call."""
    cpu_s: list[float]
    """Process CPU seconds of every kept call (all threads)."""
    warmup_s: list[float]
    """Wall-clock seconds of the dropped warm-up calls."""
    peak_mb: float
    """Peak memory while the bench ran (see `MemorySampler`)."""
    memory_kind: str
    """``host_rss`` or ``device``."""
    heavy: bool = False
    """Timed after the other benches' rounds (`time_round_robin`), not beside them."""


def time_round_robin(
    benches: list[Bench],
    repeats: int,
    warmup: int = 1,
    slow_s: float = float("inf"),
    slow_repeats: int = 1,
    min_sample_s: float = 0.0,
    heavy_ratio: float = float("inf"),
) -> list[Timing]:
    """Time every bench ``repeats`` times after ``warmup`` calls, one sample each per round.

    A sample of a bench whose warm-up call was shorter than ``min_sample_s`` runs as
    many back-to-back calls as fill that time (``timeit``'s autorange) and records the
    mean call: bursts of load from other processes then average out instead of landing
    on single short calls. A bench whose warm-up call took over ``slow_s`` seconds is
    timed only ``slow_repeats`` times (one-time costs are negligible in such calls).
    Benches whose warm-up call took over ``heavy_ratio`` times the fastest one's are
    timed after the others have done all their rounds (which first get one more dropped
    round): a long all-core call changes the machine's speed for the calls right after
    it, and would tilt the ratios among the short benches by their order. Every other
    round runs in reverse order, so no bench always follows the same one.
    """
    check_counts(repeats, warmup)
    out = [Timing([], [], [], 0.0, "") for _ in benches]

    def sample(i: int, keep: bool) -> None:
        t = out[i]
        calls = 1
        if keep and min_sample_s > 0:
            calls = max(1, round(min_sample_s / max(min(t.warmup_s), 1e-6)))
        with MemorySampler() as mem:
            cpu, start = time.process_time(), time.perf_counter()
            for _ in range(calls):
                jax.block_until_ready(benches[i].call())
            seconds = (time.perf_counter() - start) / calls
            cpu = (time.process_time() - cpu) / calls
        if keep:
            t.times_s.append(seconds)
            t.cpu_s.append(cpu)
        else:
            t.warmup_s.append(seconds)
        out[i] = t._replace(
            peak_mb=max(t.peak_mb, mem.peak / 2**20), memory_kind=mem.kind
        )

    everyone = range(len(benches))
    for _ in range(warmup):
        for i in everyone:
            sample(i, keep=False)
    heavy = []
    if warmup and benches:
        fastest = min(out[i].warmup_s[0] for i in everyone)
        heavy = [i for i in everyone if out[i].warmup_s[0] > heavy_ratio * fastest]
    light = [i for i in everyone if i not in heavy]
    if heavy and light:  # let the machine recover from the heavy warm-up calls
        for i in light:
            sample(i, keep=False)
    for i in heavy:
        out[i] = out[i]._replace(heavy=True)
    for group in (light, heavy):
        for k in range(repeats):
            for i in group if k % 2 == 0 else group[::-1]:
                t = out[i]
                if t.warmup_s[-1] > slow_s and len(t.times_s) >= slow_repeats:
                    continue
                sample(i, keep=True)
    return out


def check_counts(repeats: int, warmup: int) -> None:
    """Refuse timing counts below 1: the warm-up call sizes the samples."""
    for name, value in (("repeats", repeats), ("warmup", warmup)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def paired_ratio(base: Timing, t: Timing, work: float = 1.0) -> dict | None:
    """Quartiles over rounds of t's speed / base's, if both ran in the same rounds.

    ``work``: t's env steps per call / base's. Each round's two calls ran back to back,
    so their ratio sees the same machine state; the spread of these ratios shows how
    far the machine's load moved them.
    """
    if base.heavy or t.heavy or len(base.times_s) != len(t.times_s):
        return None
    r = [work * b / s for b, s in zip(base.times_s, t.times_s)]
    q1, median, q3 = quartiles(r)
    return {"median": median, "q1": q1, "q3": q3, "rounds": len(r)}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile), inclusive; one value is all three."""
    if not values[1:]:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, method="inclusive")
    return q1, median, q3


def rows_for(
    case: Case, benches: list[Bench], timings: list[Timing], skipped: list[Skipped]
) -> list[dict]:
    """JSON rows (the contract's keys plus timing detail) of one case."""
    common = {
        "env": case.env, "hidden": case.hidden, "kind": case.kind,
        "num_layers": case.num_layers, "horizon": case.horizon,
    }  # fmt: skip
    rows = []
    for b, t in zip(benches, timings):
        median = statistics.median(t.times_s)
        rows.append({
            **common, "method": b.method, "population": b.population, "rank": b.rank,
            "env_steps_per_s": b.env_steps / median, "time_per_generation_s": median,
            "cpu_s_per_generation": statistics.median(t.cpu_s),
            "times_s": t.times_s, "warmup_s": t.warmup_s, "compile_s": b.compile_s,
            "peak_memory_mb": t.peak_mb, "memory_kind": t.memory_kind,
            "xla_memory_mb": b.xla_memory_mb, "env_steps_per_call": b.env_steps,
            "note": b.note,
        })  # fmt: skip
    plain = next((i for i, b in enumerate(benches) if b.method == "plain"), None)
    for r, t in zip(rows, timings):
        r["ratio_to_plain"] = r["paired_ratio_to_plain"] = None
        if plain is not None:
            r["ratio_to_plain"] = r["env_steps_per_s"] / rows[plain]["env_steps_per_s"]
            work = r["env_steps_per_call"] / rows[plain]["env_steps_per_call"]
            r["paired_ratio_to_plain"] = paired_ratio(timings[plain], t, work)
    for s in skipped:
        rows.append({
            **common, "method": s.method, "population": case.population, "rank": None,
            "env_steps_per_s": None, "ratio_to_plain": None,
            "paired_ratio_to_plain": None, "skipped": True,
            "note": s.note,
        })  # fmt: skip
    return rows


def run_case(
    case: Case,
    methods: tuple[tuple[str, int | None], ...],
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
    log: Callable[[str], None] = print,
    slow_s: float = float("inf"),
    min_sample_s: float = 1.0,
    heavy_ratio: float = float("inf"),
) -> list[dict]:
    """Build, compile and time ``methods`` (name, rank) side by side on ``case``.

    A method that cannot run here (missing package, too little memory, an error while
    building it) becomes a skipped row with the reason, and the others still run.
    """
    key = jax.random.key(seed)
    benches: list[Bench] = []
    skipped: list[Skipped] = []
    unknown = [name for name, _ in methods if name not in METHODS]
    if unknown:  # before anything compiles
        raise ValueError(f"unknown method {unknown[0]!r}; choose from {METHODS}")
    check_counts(repeats, warmup)
    for name, rank in methods:
        try:
            built = build(name, rank, case, key)
        except Exception as err:  # noqa: BLE001 - reported in the row, run goes on
            built = Skipped(name, f"failed: {type(err).__name__}: {err}"[:500])
        if isinstance(built, Skipped):
            log(f"  skip {name}: {built.note}")
            skipped.append(built)
        else:
            log(f"  compiled {name}{'' if rank is None else f' r{rank}'} "
                f"in {built.compile_s:.1f}s")  # fmt: skip
            benches.append(built)
    timings = time_round_robin(
        benches, repeats, warmup, slow_s, 1, min_sample_s, heavy_ratio
    )
    rows = rows_for(case, benches, timings, skipped)
    for r in rows:
        if r.get("skipped"):
            continue
        paired, ratio = r["paired_ratio_to_plain"], r["ratio_to_plain"]
        log(f"  {r['method']:>15} r={r['rank']!s:>4}: "
            f"{r['env_steps_per_s']:>12,.0f} steps/s  "
            f"{r['time_per_generation_s']:.3f} s/gen  "
            f"ratio {'-' if ratio is None else f'{ratio:.3f}'}"
            + (f"  paired {paired['median']:.3f} ({paired['q1']:.3f}-{paired['q3']:.3f})"
               if paired else ""))  # fmt: skip
    return rows


def build(name: str, rank: int | None, case: Case, key: jax.Array) -> Bench | Skipped:
    """The compiled `Bench` of method ``name`` (and EGGROLL ``rank``) on ``case``."""
    from esrl import bench_methods as bm

    if name == "plain":
        return bm.build_plain(case, key)
    if name in ("eggroll", "openai_es"):
        return bm.build_es(case, key, name, rank or 1)
    if name == "ppo":
        return bm.build_ppo(case, key)
    return bm.build_evosax(case, key)
