"""How close to plain inference could a fused CPU kernel bring EGGROLL? A measured probe.

    python scripts/fused_probe.py                 # MLP 256x2, pop 2048, 500 steps (~1 min)
    python scripts/fused_probe.py --xla           # also esrl's own plain and eggroll, same rounds

Builds `scripts/fused_probe.cc` with g++ against numpy's bundled OpenBLAS, checks its
rollout against a float64 NumPy reference with every member's weights materialised
(W + sigma * sign * a b^T, perturbed biases), then times the plain and the EGGROLL rank-1
rollout of the benchmark's headline shape round-robin and prints the paired ratio (median
and interquartile range over rounds). The probe is not part of the library: its
environment is a synthetic update of the observation, and it serves the MLP only. With
``--xla`` the rounds also time esrl's compiled `plain` and `eggroll` generations on
CartPole (`esrl.bench`), whose ratio is the README's headline.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("fused_probe.cc")


def build(out_dir: str) -> ctypes.CDLL:
    """Compile the probe into ``out_dir`` and load it; a clear error if it cannot."""
    if shutil.which("g++") is None:
        raise SystemExit("fused_probe needs g++ (apt install g++)")
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "*openblas*"))
    if not libs:
        raise SystemExit("fused_probe needs numpy's bundled OpenBLAS (a numpy wheel)")
    lib = os.path.join(out_dir, "fused_probe.so")
    cmd = [
        "g++",
        "-O3",
        "-march=native",
        "-ffast-math",
        "-std=c++17",
        "-shared",
        "-fPIC",
    ]
    cmd += [str(SOURCE), "-o", lib, libs[0], f"-Wl,-rpath,{os.path.dirname(libs[0])}"]
    subprocess.run(cmd + ["-lpthread"], check=True)
    dll = ctypes.CDLL(lib)
    dll.probe_rollout.restype = None
    return dll


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def make(members: int, obs_dim: int, hidden: int, out: int, seed: int = 0) -> dict:
    """Random params (lecun-normal kernels, small biases), pair noise and observations."""
    rng = np.random.default_rng(seed)

    def f32(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    widths = [obs_dim] + [hidden] * 6 + [out] * 2  # a1 b1 e1 a2 b2 e2 a3 b3 e3
    p = {
        "w1": f32(obs_dim, hidden, scale=obs_dim**-0.5), "c1": f32(hidden, scale=0.1),
        "w2": f32(hidden, hidden, scale=hidden**-0.5), "c2": f32(hidden, scale=0.1),
        "w3": f32(hidden, out, scale=hidden**-0.5), "c3": f32(out, scale=0.1),
        "noise": f32(members // 2, sum(widths)), "obs": f32(members, obs_dim),
    }  # fmt: skip
    # the kernel's layout: part-major (every pair's a1, then every pair's b1, ...)
    parts = np.split(p["noise"], np.cumsum(widths)[:-1], axis=1)
    p["parts"] = np.concatenate([part.ravel() for part in parts])
    return p


def rollout(dll, p: dict, steps: int, sigma: float, noise: bool, chunk: int, threads=2):
    """Run the compiled rollout; (final observations, last logits, seconds)."""
    obs = p["obs"].copy()
    members, obs_dim = obs.shape
    hidden, out = p["w3"].shape
    if (obs_dim, out) != (4, 2):
        raise ValueError("the probe is compiled for 4 observations and 2 actions")
    logits = np.zeros((members, out), np.float32)
    args = [_ptr(p[k]) for k in ("w1", "c1", "w2", "c2", "w3", "c3", "parts")]
    start = time.perf_counter()
    dll.probe_rollout(
        hidden, *args, ctypes.c_float(sigma), int(noise), _ptr(obs),
        ctypes.c_int64(members), steps, chunk, threads, _ptr(logits),
    )  # fmt: skip
    return obs, logits, time.perf_counter() - start


def reference(p: dict, steps: int, sigma: float, noise: bool):
    """The same rollout in float64 NumPy, each member's weights materialised."""
    obs = p["obs"].astype(np.float64)
    members, d = obs.shape
    hidden, out = p["w3"].shape
    logits = np.zeros((members, out))
    for m in range(members):
        sg = sigma * (-1) ** m if noise else 0.0
        z = p["noise"][m // 2].astype(np.float64)
        a1, b1, e1, a2, b2, e2, a3, b3, e3 = np.split(
            z, np.cumsum([d] + [hidden] * 6 + [out])
        )
        w1, w2, w3 = (p[w] + sg * np.outer(a, b) for w, a, b in
                      (("w1", a1, b1), ("w2", a2, b2), ("w3", a3, b3)))  # fmt: skip
        e1, e2, e3 = sg * e1, sg * e2, sg * e3
        for _ in range(steps):
            h = np.tanh(obs[m] @ w1 + p["c1"] + e1)
            h = np.tanh(h @ w2 + p["c2"] + e2)
            logits[m] = h @ w3 + p["c3"] + e3
            obs[m] = 0.9 * obs[m] + 0.1 * logits[m][np.arange(d) % out]
    return obs, logits


def check(dll) -> None:
    """The probe's rollout equals the materialised-weights reference (else exit)."""
    p = make(members=10, obs_dim=4, hidden=16, out=2, seed=1)
    for noise in (False, True):
        got = rollout(dll, p, steps=3, sigma=0.1, noise=noise, chunk=4)[:2]
        want = reference(p, steps=3, sigma=0.1, noise=noise)
        for g, w in zip(got, want):
            if not np.allclose(g, w, rtol=1e-4, atol=1e-5):
                raise SystemExit(f"fused_probe differs from the reference: {g} vs {w}")


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def main(argv: list[str] | None = None) -> None:
    """Build, check, time round-robin, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--population", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--chunk", type=int, default=128, help="members per sgemm")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--xla", action="store_true", help="also time esrl's own methods")
    args = ap.parse_args(argv)
    if args.population % 2 or args.population < 2:
        raise SystemExit("--population must be even (antithetic pairs)")
    with tempfile.TemporaryDirectory() as d:
        dll = build(d)
        check(dll)
        p = make(args.population, 4, args.hidden, 2)
        calls = {
            f"fused {kind}": lambda noise=noise: rollout(
                dll, p, args.steps, 0.03, noise, args.chunk
            )[2]
            for kind, noise in (("plain", False), ("eggroll", True))
        }
        if args.xla:
            calls.update(_xla_calls(args))
        for call in calls.values():  # warm-up
            call()
        times = {name: [] for name in calls}
        for r in range(args.rounds):
            for name in list(calls)[:: 1 if r % 2 == 0 else -1]:
                times[name].append(calls[name]())
    print(f"population {args.population}, hidden {args.hidden}x2, {args.steps} steps, "
          f"{args.rounds} rounds; paired ratio = median (IQR) of plain time / time")  # fmt: skip
    print("| method | s / gen (median) | paired ratio to plain (IQR) |\n|---|---|---|")
    for name, ts in times.items():
        base = times[name.replace("eggroll", "plain")]
        lo, mid, hi = _quartiles([b / t for b, t in zip(base, ts)])
        print(
            f"| {name} | {statistics.median(ts):.3f} | {mid:.3f} ({lo:.3f}-{hi:.3f}) |"
        )


def _xla_calls(args) -> dict:
    """esrl's compiled plain and eggroll generations on CartPole, timed per call."""
    import jax

    from esrl import bench

    case = bench.Case(
        population=args.population, hidden=args.hidden, horizon=args.steps
    )
    calls = {}
    for method in ("plain", "eggroll"):
        built = bench.build(method, 1 if method == "eggroll" else None, case,
                             jax.random.PRNGKey(0))  # fmt: skip

        def timed(call=built.call):
            start = time.perf_counter()
            jax.block_until_ready(call())
            return time.perf_counter() - start

        calls[f"esrl {method}"] = timed
    return calls


if __name__ == "__main__":
    main()
