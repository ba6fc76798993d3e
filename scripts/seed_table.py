"""Summarise finished runs over seeds: one Markdown row per setting, mean ± std of seeds.

    python scripts/seed_table.py runs/seeds/cartpole_*_s*

Runs whose saved settings are equal except for the seed (and progress / TensorBoard
output) are one row: the mean and sample standard deviation of their final evaluation
returns, the lowest and highest, and the medians of their environment steps and wall
times (summary.json's ``wall_time_s``: compile and training, imports excluded). A seed
given twice in one setting is refused, as it would be counted twice.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from esrl.checkpoint import has_checkpoint, read_meta
from esrl.logger import SUMMARY

IGNORED = ("seed", "progress", "tensorboard")
"""Spec fields that do not make runs different settings (found at any depth)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="DIR", help="finished run directories")
    return p.parse_args(argv)


def load(directory: Path) -> tuple[str, int, dict]:
    """(settings without the seed, as JSON; seed; summary) of one finished run."""
    if not (directory / SUMMARY).is_file() or not has_checkpoint(directory):
        raise SystemExit(
            f"{directory} is no finished run (it needs {SUMMARY} and a checkpoint); "
            "pass the --out directories of finished runs"
        )
    meta = read_meta(directory)
    spec = meta.get("spec", meta)  # an LLM run's meta holds its settings itself
    seed = _find(spec, "seed")
    settings = json.dumps(_without(spec, IGNORED), sort_keys=True)
    return settings, seed, json.loads((directory / SUMMARY).read_text())


def _find(tree: Any, key: str) -> Any:
    """The value of the first ``key`` in a nested dict, or None."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


def _without(tree: Any, keys: tuple[str, ...]) -> Any:
    """``tree`` with ``keys`` dropped from every nested dict."""
    if isinstance(tree, dict):
        return {k: _without(v, keys) for k, v in tree.items() if k not in keys}
    return tree


def group(runs: list[Path]) -> list[list[tuple[int, dict, Path]]]:
    """Runs grouped by settings, in order of first appearance; each (seed, summary, dir)."""
    groups: dict[str, list[tuple[int, dict, Path]]] = {}
    for directory in runs:
        settings, seed, summary = load(directory)
        members = groups.setdefault(settings, [])
        for other_seed, _, other in members:
            if other_seed == seed:
                raise SystemExit(
                    f"{directory} and {other} are the same setting with the same "
                    f"seed {seed}; pass each seed once"
                )
        members.append((seed, summary, directory))
    return list(groups.values())


def row(members: list[tuple[int, dict, Path]]) -> str:
    """One Markdown table row of a setting's seeds."""
    summary = members[0][1]
    returns = [s["final_eval_return"] for _, s, _ in members]
    std = f" ± {statistics.stdev(returns):.1f}" if len(returns) > 1 else ""
    steps = statistics.median(s["env_steps"] for _, s, _ in members)
    wall = statistics.median(s["wall_time_s"] for _, s, _ in members)
    seeds = ", ".join(str(seed) for seed, _, _ in members)
    cells = [
        summary["env"], summary["agent"], summary.get("policy", "-"), seeds,
        f"{statistics.fmean(returns):.1f}{std}", f"{min(returns):.1f}",
        f"{max(returns):.1f}", f"{steps / 1e6:.2f}M", f"{wall:.1f} s",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| environment | agent | policy | seeds | eval return mean ± std | min | max "
    "| env steps (median) | wall (median) |\n|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    """Group the runs and print the table."""
    args = parse_args(argv)
    groups = group([Path(run) for run in args.runs])
    print("\n".join([HEADER, *(row(members) for members in groups)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
