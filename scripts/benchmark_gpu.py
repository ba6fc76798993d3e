"""The GPU snapshot in README's Benchmark section: four cases, side by side in one run.

    python scripts/benchmark_gpu.py [SECONDS] --> $OUT/gpu_bench.json (OUT defaults to .)

Run on the lent H100 (jax 0.11.2, CUDA) with a 120 s budget: ES methods time the whole
generation step (ask, rollout, tell), ``plain`` the same rollout with shared weights.
Without a GPU it measures the same cases on the CPU, and says so: there a case takes
minutes (OpenAI-ES on the GRU, ~90 s a generation), and a case once started finishes.
"""

import argparse
import os
import shlex
import sys
import time

import jax

from esrl.bench import Case, device_description, run_case
from esrl.bench_report import write

CASES = [
    (Case(kind="mlp", hidden=256, population=2048),
     (("plain", None), ("eggroll", 1), ("openai_es", None))),
    (Case(kind="gru", hidden=256, population=2048),
     (("plain", None), ("eggroll", 1), ("openai_es", None))),
    (Case(kind="mlp", hidden=1024, population=2048),
     (("plain", None), ("eggroll", 1), ("openai_es", None))),
    (Case(kind="mlp", hidden=256, population=16384), (("plain", None), ("eggroll", 1))),
]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Run the cases until the time budget (first argument, seconds) is spent."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seconds", type=float, nargs="?", default=120.0,
                        help="time budget: no new case starts after it")  # fmt: skip
    budget = parser.parse_args(argv).seconds
    if not budget > 0:  # nothing would run, and nothing be written
        parser.error(f"the time budget must be > 0 seconds, got {budget}")
    out = os.environ.get("OUT", ".")
    if not os.path.isdir(out):  # before minutes of measuring, not after
        parser.error(f"$OUT={out} is not a directory")
    device = device_description()
    args = sys.argv[1:] if argv is None else argv
    meta = {"command": shlex.join(["python", "scripts/benchmark_gpu.py", *args])}
    print(f"device: {device}", flush=True)
    if jax.default_backend() == "cpu":
        print("no GPU found: measuring these cases on the CPU (minutes per case)",
              file=sys.stderr, flush=True)  # fmt: skip
    rows, start = [], time.time()
    for case, methods in CASES:
        if time.time() - start > budget:
            break
        print(case, flush=True)
        rows += run_case(case, methods, repeats=3)
        write(os.path.join(out, "gpu_bench.json"), device, rows, meta)


if __name__ == "__main__":
    main()
