"""How close to plain inference could a fused CPU kernel bring EGGROLL? A measured probe.

    python scripts/fused_probe.py                 # MLP 256x2, pop 2048, 500 steps (~1 min)
    python scripts/fused_probe.py --kind gru      # GRU 256 (embed, GRU cell, dense layer)
    python scripts/fused_probe.py --xla           # also esrl's own plain and eggroll, same rounds

Builds `scripts/fused_probe.cc` with g++ against numpy's bundled OpenBLAS, checks its
rollout against a float64 NumPy reference with every member's weights materialised
(W + sigma * sign * a b^T, perturbed biases), then times the plain and the EGGROLL rank-1
rollout of the benchmark's headline shapes round-robin and prints the paired ratio
(median and interquartile range over rounds). The probe is not part of the library: its
environment is a synthetic update of the observation, and it serves the benchmark's two
policies (4 observations, 2 actions) only. With
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

import jax
import numpy as np

from esrl import bench

SOURCE = Path(__file__).with_name("fused_probe.cc")
KINDS = ("mlp", "gru")


def build(out_dir: str) -> ctypes.CDLL:
    """Compile the probe into ``out_dir`` and load it; a clear error if it cannot."""
    if shutil.which("g++") is None:
        raise SystemExit("fused_probe needs g++ (apt install g++)")
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "*openblas*"))
    if not libs:
        raise SystemExit("fused_probe needs numpy's bundled OpenBLAS (a numpy wheel)")
    lib = os.path.join(out_dir, "fused_probe.so")
    flags = ["-O3", "-march=native", "-ffast-math", "-std=c++17", "-shared", "-fPIC"]
    cmd = ["g++", *flags, str(SOURCE), "-o", lib, libs[0]]
    rpath = f"-Wl,-rpath,{os.path.dirname(libs[0])}"  # the .so finds OpenBLAS there
    subprocess.run([*cmd, rpath, "-lpthread"], check=True)
    dll = ctypes.CDLL(lib)
    dll.probe_rollout.restype = None
    return dll


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def layers(kind: str, hidden: int) -> list[tuple[int, int]]:
    """(in, out) of every perturbable dense layer of the probe's ``kind`` policy."""
    if kind == "mlp":  # actor_0, actor_1, head
        return [(4, hidden), (hidden, hidden), (hidden, 2)]
    # embed, GRU input and recurrent matrices (r, z, n), actor_0, head
    return [(4, hidden), (hidden, 3 * hidden), (hidden, 3 * hidden), (hidden, hidden),
            (hidden, 2)]  # fmt: skip


def make(kind: str, members: int, hidden: int, seed: int = 0) -> dict:
    """Random params (lecun-normal kernels, small biases), pair noise and observations.

    ``noise`` holds each layer's unit (a, b, e) per pair: a [pairs, in] and b, e
    [pairs, out]; ``parts`` is all of it flattened in that order, the kernel's layout.
    """
    rng = np.random.default_rng(seed)

    def f32(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    dims = layers(kind, hidden)
    pairs = members // 2
    weights = [(f32(i, o, scale=i**-0.5), f32(o, scale=0.1)) for i, o in dims]
    noise = [(f32(pairs, i), f32(pairs, o), f32(pairs, o)) for i, o in dims]
    if kind == "gru":  # as esrl's GRUCell: the recurrent bias is the candidate's alone
        weights[2][1][: 2 * hidden] = 0
        noise[2][2][:, : 2 * hidden] = 0
    parts = np.concatenate([x.ravel() for layer in noise for x in layer])
    return {"kind": kind, "hidden": hidden, "weights": weights, "noise": noise,
            "parts": parts, "obs": f32(members, 4)}  # fmt: skip


def rollout(dll, p: dict, steps: int, sigma: float, noise: bool, chunk: int, threads=2):
    """Run the compiled rollout; (final observations, last logits, seconds)."""
    obs = p["obs"].copy()
    members = len(obs)
    logits = np.zeros((members, 2), np.float32)
    flat = [x for layer in p["weights"] for x in layer]
    weights = (ctypes.POINTER(ctypes.c_float) * len(flat))(*map(_ptr, flat))
    dims = np.array(layers(p["kind"], p["hidden"]), np.int32)
    start = time.perf_counter()
    dll.probe_rollout(
        KINDS.index(p["kind"]), p["hidden"], dims.ctypes.data_as(ctypes.c_void_p),
        weights, _ptr(p["parts"]), ctypes.c_float(sigma), int(noise), _ptr(obs),
        ctypes.c_int64(members), steps, chunk, threads, _ptr(logits),
    )  # fmt: skip
    return obs, logits, time.perf_counter() - start


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference(p: dict, steps: int, sigma: float, noise: bool):
    """The same rollout in float64 NumPy, each member's weights materialised."""
    obs = p["obs"].astype(np.float64)
    logits = np.zeros((len(obs), 2))
    for m in range(len(obs)):
        sg = sigma * (-1) ** m if noise else 0.0
        dense = []  # each layer as a function of one input, with W + sg a b^T, c + sg e
        for (w, c), (a, b, e) in zip(p["weights"], p["noise"]):
            a, b, e = (x[m // 2].astype(np.float64) for x in (a, b, e))
            w, c = w + sg * np.outer(a, b), c + sg * e
            dense.append(lambda x, w=w, c=c: x @ w + c)
        h = np.zeros(p["hidden"])
        for _ in range(steps):
            x = np.tanh(dense[0](obs[m]))
            if p["kind"] == "gru":
                xr, xz, xn = np.split(dense[1](x), 3)
                hr, hz, hn = np.split(dense[2](h), 3)
                r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
                h = (1 - z) * np.tanh(xn + r * hn) + z * h
                x = h
            x = np.tanh(dense[-2](x))
            logits[m] = dense[-1](x)
            obs[m] = 0.9 * obs[m] + 0.1 * logits[m][np.arange(4) % 2]
    return obs, logits


def check(dll) -> None:
    """The probe's rollout equals the materialised-weights reference (else exit)."""
    for kind in KINDS:
        p = make(kind, members=10, hidden=16, seed=1)
        for noise in (False, True):
            got = rollout(dll, p, steps=3, sigma=0.1, noise=noise, chunk=4)[:2]
            want = reference(p, steps=3, sigma=0.1, noise=noise)
            for g, w in zip(got, want):
                if not np.allclose(g, w, rtol=1e-4, atol=1e-5):
                    raise SystemExit(f"fused_probe ({kind}) differs from the reference")


def main(argv: list[str] | None = None) -> None:
    """Build, check, time round-robin, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=KINDS, default="mlp")
    ap.add_argument("--population", type=bench.positive_int, default=2048)
    ap.add_argument("--hidden", type=bench.positive_int, default=256)
    ap.add_argument("--steps", type=bench.positive_int, default=500)
    ap.add_argument(
        "--chunk", type=bench.positive_int, default=128, help="members per sgemm"
    )
    ap.add_argument("--rounds", type=bench.positive_int, default=11)
    ap.add_argument("--xla", action="store_true", help="also time esrl's own methods")
    args = ap.parse_args(argv)
    if args.population % 2:
        ap.error("--population must be even (antithetic pairs)")
    with tempfile.TemporaryDirectory() as d:
        dll = build(d)
        check(dll)
        p = make(args.kind, args.population, args.hidden)
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
    policy = f"MLP {args.hidden}x2" if args.kind == "mlp" else f"GRU {args.hidden}"
    print(f"{policy}, population {args.population}, {args.steps} steps, "
          f"{args.rounds} rounds; paired ratio = median (IQR) of plain time / time")  # fmt: skip
    print("| method | s / gen (median) | paired ratio to plain (IQR) |\n|---|---|---|")
    for name, ts in times.items():
        base = times[name.replace("eggroll", "plain")]
        lo, mid, hi = bench.quartiles([b / t for b, t in zip(base, ts)])
        print(
            f"| {name} | {statistics.median(ts):.3f} | {mid:.3f} ({lo:.3f}-{hi:.3f}) |"
        )


def _xla_calls(args) -> dict:
    """esrl's compiled plain and eggroll generations on CartPole, timed per call."""
    case = bench.Case(kind=args.kind, hidden=args.hidden,
                      population=args.population, horizon=args.steps)  # fmt: skip
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
