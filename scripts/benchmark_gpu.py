"""The GPU snapshot in README's Benchmark section: four cases, side by side in one run.

    python scripts/benchmark_gpu.py [SECONDS] --> $OUT/gpu_bench.json (OUT defaults to .)

Run on the lent H100 (jax 0.11.2, CUDA) with a 120 s budget: ES methods time the whole
generation step (ask, rollout, tell), ``plain`` the same rollout with shared weights.
"""

import argparse
import json
import os
import time

from esrl.bench import Case, device_description, run_case

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
    rows, start = [], time.time()
    for case, methods in CASES:
        if time.time() - start > budget:
            break
        print(case, flush=True)
        rows += run_case(case, methods, repeats=3)
        with open(os.path.join(out, "gpu_bench.json"), "w") as f:
            json.dump({"device": device_description(), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
