"""Throughput benchmark: plain inference vs EGGROLL vs OpenAI-ES vs PPO vs evosax.

    python scripts/benchmark.py --quick --out /tmp/quick.json             # ~3 min, CPU
    python scripts/benchmark.py --out docs/benchmark.json                 # all sweeps
    python scripts/benchmark.py --only width population --out FILE.json
    python scripts/benchmark.py --only rank --update --out docs/benchmark.json  # rerun one

Every method of a case is measured side by side in the same run (round-robin, warm-up
excluded, median of repeats), so the ratios are comparable even on a shared machine.
Writes FILE.json (``device`` and ``results`` rows with ``env``,
``method``, ``population``, ``hidden``, ``rank``, ``env_steps_per_s``,
``ratio_to_plain``, plus ``paired_ratio_to_plain`` (quartiles of the per-round speed
ratio), time per generation, compile time and peak memory; host RSS on CPU, device
memory on a GPU) and FILE.png next to it. Runs unmodified on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from pathlib import Path

from esrl import bench
from esrl.bench import Case, device_description, positive_int, run_case
from esrl.bench_report import load, plot, write

P, E, O = ("plain", None), ("eggroll", 1), ("openai_es", None)
PPO, EVOSAX = ("ppo", None), ("evosax_open_es", None)
HEADLINE = (P, E, ("eggroll", 2), O, PPO, EVOSAX)

SECTIONS: dict[str, list[tuple[Case, tuple]]] = {
    # --quick: CartPole, population 2048, hidden 256, MLP 256x2 and GRU, 500 steps
    "quick": [
        (Case(kind="mlp"), (P, E, O, PPO, EVOSAX)),
        (Case(kind="gru"), (P, E, PPO)),
    ],
    # the same cases with every method and rank 2 (the head is 256 x 2)
    "headline": [(Case(kind="mlp"), HEADLINE), (Case(kind="gru"), HEADLINE)],
    # eggroll / openai_es and ratio to plain as the network widens
    "width": [
        (Case(kind=kind, hidden=h, population=512, horizon=100), (P, E, O))
        for kind in ("mlp", "gru")
        for h in (64, 128, 256, 512, 1024)
    ],
    # linear cost in population
    "population": [
        (Case(population=n, horizon=200), (P, E) + ((O,) if n <= 4096 else ()))
        for n in (256, 1024, 4096, 16384)
    ],
    # higher ranks (matrices with a dimension below the rank are left unperturbed)
    "rank": [(Case(), (P, E) + tuple(("eggroll", r) for r in (2, 4, 8, 16)))],
    # the other environments (evosax's GymnaxProblem only serves gymnax ones)
    "envs": [
        (Case(env="gymnax/Breakout-MinAtar", population=2048, horizon=200),
         (P, E, O, PPO, EVOSAX)),
        (Case(env="brax/ant", population=256, horizon=100), (P, E, O, PPO)),
        (Case(env="craftax/Craftax-Classic-Symbolic-v1", population=256, horizon=100),
         (P, E, O, PPO)),
    ],
}  # fmt: skip


FULL_OUT = "docs/benchmark.json"
"""Where the full sweep is written when --out is left out."""


def unwritable(out: Path) -> str | None:
    """Why the JSON (and the plot next to it) cannot be written to ``out``, or None."""
    if out.suffix.lower() == ".png":
        return "the plot goes next to the JSON as FILE.png; give the JSON another name"
    with contextlib.suppress(OSError):  # `write` makes missing directories too
        out.parent.mkdir(parents=True, exist_ok=True)
    return bench.unwritable(out)


def previous(path: Path, device: str, xla_flags: str) -> dict:
    """An earlier run's JSON for --update, its metadata completed; ValueError if unfit."""
    try:
        doc = load(path)
    except ValueError as err:
        raise ValueError(f"{err}; rerun without --update") from None
    if doc["device"] != device:
        raise ValueError(
            f"was measured on {doc['device']}, not here; rerun without --update or "
            "give another --out"
        )
    if doc.get("xla_flags", xla_flags) != xla_flags:  # the file records one value
        raise ValueError(
            f"was measured with XLA_FLAGS={doc['xla_flags']!r}, this run has "
            f"{xla_flags!r}; set XLA_FLAGS as it was, or rerun without --update"
        )
    if not all(isinstance(r, dict) and "section" in r for r in doc["results"]):
        raise ValueError(
            "has rows without a section (written by an older benchmark.py), which "
            "--update cannot tell apart; rerun without --update"
        )
    sections = list(dict.fromkeys(r["section"] for r in doc["results"]))
    repeats = doc.get("repeats", {})
    if not isinstance(repeats, dict):  # one count for every section in older files
        repeats = dict.fromkeys(doc.get("sections", sections), repeats)
    return {**doc, "command": doc.get("command", ""), "repeats": repeats,
            "sections": doc.get("sections", sections)}  # fmt: skip


def save(out: Path, device: str, rows: list[dict], meta: dict, start: float) -> None:
    """Write ``rows``; the metadata names only the sections they hold (so far)."""
    held = {r["section"] for r in rows}
    sections = [s for s in meta["sections"] if s in held]
    repeats = {s: n for s, n in meta["repeats"].items() if s in held}
    meta = {**meta, "sections": sections, "repeats": repeats}
    write(out, device, rows, {**meta, "wall_s": time.time() - start})


def resume_hint(out: Path, rest: list[str], args, wrote: bool) -> str:
    """What an interrupted run kept, and the command that measures the rest."""
    if not wrote:
        return f"interrupted in section {rest[0]}: nothing written yet; run it again"
    only = "--quick" if args.quick else "--only " + " ".join(rest)
    repeats = f" --repeats {args.repeats}" if args.repeats else ""
    kept = "" if args.update else " and the cases of this one measured so far"
    return (
        f"interrupted in section {rest[0]}: {out} keeps the sections finished before"
        f"{kept}; measure the rest with: python scripts/benchmark.py {only}{repeats} "
        f"--update --out {shlex.quote(str(out))}"
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run the sections, write the JSON and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CartPole pop 2048 hidden 256 only, fewer repeats (~3 min on CPU)",
    )
    parser.add_argument(
        "--out",
        help="JSON file (default docs/benchmark.json; with --quick "
        "runs/benchmark_quick.json, so a quick run never replaces the full one)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=list(SECTIONS), help="run only these sections"
    )
    parser.add_argument("--repeats", type=positive_int, help="timed calls per method")
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other sections' rows of an existing --out file (rerun --only ones)",
    )
    # the command recorded in the JSON (main(argv) records its argv, not its caller's)
    command = [
        "python",
        *(sys.argv if argv is None else ["scripts/benchmark.py", *argv]),
    ]
    args = parser.parse_args(argv)  # fmt: skip
    if args.quick and args.only:
        parser.error("--quick is its own section; give --quick or --only, not both")

    full = [name for name in SECTIONS if name != "quick"]
    # a section named twice would run twice and write its rows twice
    sections = ["quick"] if args.quick else list(dict.fromkeys(args.only or full))
    repeats = args.repeats or (2 if args.quick else 5)
    # a method whose call takes over slow_s is timed once after its warm-up
    slow_s = 8.0 if args.quick else 30.0
    # methods 5x slower than a case's fastest (openai_es, evosax) are timed after the rest
    heavy_ratio = 5.0
    out = Path(args.out or ("runs/benchmark_quick.json" if args.quick else FULL_OUT))
    device, rows, start = device_description(), [], time.time()
    replaced: list[dict] = []  # --update: old rows of the sections being rerun
    meta = {"command": shlex.join(command), "quick": args.quick,
            "repeats": dict.fromkeys(sections, repeats), "sections": sections,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}  # fmt: skip
    if problem := unwritable(out):  # before minutes of measuring, not after
        parser.error(f"--out {out}: {problem}")
    if args.update and out.exists():
        try:
            old = previous(out, device, meta["xla_flags"])
        except ValueError as err:
            parser.error(f"--update: {out}: {err}")
        rows = [r for r in old["results"] if r["section"] not in sections]
        replaced = [r for r in old["results"] if r["section"] in sections]
        kept = [s for s in old["sections"] if s not in sections]
        meta |= {"command": " && ".join(filter(None, (old["command"], meta["command"]))),
                 # quick only if every section kept is (a quick rerun into a full file
                 # leaves the full sections' rows as they were)
                 "quick": args.quick and all(s == "quick" for s in kept),
                 "sections": kept + sections,
                 "repeats": {s: old["repeats"][s] for s in kept if s in old["repeats"]}
                 | meta["repeats"]}  # fmt: skip
    print(f"device: {device}", flush=True)
    for i, section in enumerate(sections):
        new = []
        try:
            for case, methods in SECTIONS[section]:
                print(f"[{section}] {case}", flush=True)
                new += [
                    {**r, "section": section}
                    for r in run_case(
                        case,
                        methods,
                        repeats=repeats,
                        slow_s=slow_s,
                        heavy_ratio=heavy_ratio,
                    )
                ]
                if not replaced:  # a fresh file keeps every case as it is measured
                    save(out, device, rows + new, meta, start)
        except KeyboardInterrupt:
            wrote = bool(args.update or rows or new)
            print(resume_hint(out, sections[i:], args, wrote), file=sys.stderr)
            raise
        # an updated file swaps a section's rows only once it is complete, so an
        # interrupted rerun leaves the old rows of the sections it had not finished
        rows += new
        replaced = [r for r in replaced if r["section"] != section]
        save(out, device, rows + replaced, meta, start)
    plot(out.with_suffix(".png"), device, rows)
    print(f"wrote {out} and {out.with_suffix('.png')} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # main printed what was kept and how to go on
        raise SystemExit(130) from None
