"""Plot learning curves of several runs side by side: eval return vs env steps and time.

    python scripts/plot_curves.py --out docs/curves_cartpole.png \\
        --title "CartPole-v1" runs/cartpole_eggroll runs/cartpole_ppo ...

Each positional argument is a run directory (its metrics.jsonl, and summary.json or,
for a run interrupted or still training, its checkpoint), or ``LABEL=DIR`` to name the
curve (default: the run's agent); runs given the same label are seeds of one setting,
drawn as their mean with a band from the lowest to the highest. The left panel puts the evaluation return over
environment steps (log scale: ES spends far more steps than PPO), the right one over
wall-clock seconds since the run started (compilation included, so the curves start
where training did).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from esrl.checkpoint import has_checkpoint, read_meta
from esrl.logger import METRICS, SUMMARY, read_metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "runs", nargs="+", metavar="[LABEL=]DIR",
        help="run directories, finished or not; LABEL= names a curve (default: agent)",
    )  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    p.add_argument(
        "--title", default="", help="figure title (default: the runs' env ids)"
    )
    return p.parse_args(argv)


def load(run: str) -> tuple[str, list[dict], dict]:
    """(label, evaluated records, summary) of ``[LABEL=]DIR``."""
    is_dir = Path(run).is_dir()  # a directory may have "=" in its name (lr=0.1)
    label, _, path = ("", "", run) if is_dir or "=" not in run else run.partition("=")
    directory = Path(path)
    if not (directory / METRICS).is_file():
        what = (
            f"holds no run (no {METRICS})" if directory.is_dir() else "is no directory"
        )
        raise SystemExit(f"{directory} {what}; pass the --out directory of a run")
    summary_path = directory / SUMMARY
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    elif has_checkpoint(directory):  # interrupted, or still training
        meta = read_meta(directory)
        saved = meta.get("spec", meta)  # an LLM run's meta names them itself
        summary = {"env": saved["env"], "agent": saved["agent"]}
    else:
        raise SystemExit(f"{directory} has neither {SUMMARY} nor a checkpoint")
    records = [r for r in read_metrics(directory) if r.get("eval_return") is not None]
    if not records:
        raise SystemExit(f"{directory}/metrics.jsonl has no eval_return records")
    return label or summary["agent"], records, summary


def curves(runs: list[tuple[str, list[dict], dict]]) -> list[tuple[str, dict]]:
    """(label, columns) per label: a run's env_steps, wall_time_s and eval_return, or
    for runs sharing a label their means per evaluation, with "low" and "high" returns.
    """
    seeds: dict[str, list[list[dict]]] = {}
    for label, records, _ in runs:
        seeds.setdefault(label, []).append(records)
    out = []
    for label, runs_of_label in seeds.items():
        if len({len(records) for records in runs_of_label}) > 1:
            raise SystemExit(
                f"the runs labelled {label!r} evaluated a different number of times "
                "(not seeds of one setting?); give them different labels"
            )
        columns = {
            key: np.array([[r[key] for r in records] for records in runs_of_label])
            for key in ("env_steps", "wall_time_s", "eval_return")
        }
        merged = {key: values.mean(axis=0) for key, values in columns.items()}
        if len(runs_of_label) > 1:
            label = f"{label} (mean of {len(runs_of_label)})"
            merged["low"] = columns["eval_return"].min(axis=0)
            merged["high"] = columns["eval_return"].max(axis=0)
        out.append((label, merged))
    return out


def plot(runs: list[tuple[str, list[dict], dict]], out: Path, title: str) -> None:
    """Write the two-panel figure to ``out``."""
    fig, (ax_steps, ax_time) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, c in curves(runs):
        # a log axis cannot place an evaluation at step 0 (an LLM run's initial one)
        later = c["env_steps"] > 0
        for ax, x, keep in [
            (ax_steps, c["env_steps"], later),
            (ax_time, c["wall_time_s"], slice(None)),  # every evaluation
        ]:
            (line,) = ax.plot(x[keep], c["eval_return"][keep], marker=".", label=label)
            if "low" in c:
                ax.fill_between(x[keep], c["low"][keep], c["high"][keep],
                                color=line.get_color(), alpha=0.2)  # fmt: skip
    ax_steps.set_xscale("log")
    ax_steps.set_xlabel("environment steps")
    ax_time.set_xlabel("wall-clock seconds (compile included)")
    for ax in (ax_steps, ax_time):
        ax.set_ylabel("eval return")
        ax.grid(alpha=0.3)
    ax_time.legend(loc="lower right")
    envs = dict.fromkeys(summary["env"] for _, _, summary in runs)  # in order, once
    fig.suptitle(title or ", ".join(envs))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    # without a suffix matplotlib would append ".png" to the name it was given
    fig.savefig(out, dpi=110, format=out.suffix[1:] or "png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Load the runs, plot them, say where the figure went."""
    args = parse_args(argv)
    runs = [load(run) for run in args.runs]
    plot(runs, args.out, args.title)
    print(f"wrote {args.out} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
