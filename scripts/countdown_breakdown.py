"""How much of a Countdown fine-tuning gain is answer style, and how much arithmetic.

    python scripts/countdown_breakdown.py runs/countdown

evaluates the run's starting model (the shipped one unless it was given `--model`) and
its final checkpoint on the run's held-out Countdown-3 set and on Countdown-4 (never
trained on), greedy, and prints for each the accuracy, the share of equation-style
answers (``expr=target``, which the strict reward rejects) and the accuracy with those
answers cut to ``expr`` (`style_breakdown`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from esrl.envs.llm.evaluate import style_breakdown
from esrl.envs.llm.model import load_model
from esrl.envs.llm.tasks import countdown_task
from esrl.envs.llm.train import prepare_finetune
from train_countdown import resumed


def main(argv: list[str] | None = None) -> int:
    """Print the breakdown of the starting model and of the run in ``RUN_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a train_countdown.py run directory")
    args = parser.parse_args(argv)
    try:
        run = resumed(args.run_dir, None)
        base = load_model(run.model_dir)[1]  # its starting model may have moved
        tasks = [countdown_task(numbers) for numbers in (3, 4)]
        runs = [
            prepare_finetune(run, task, args.run_dir, resume=True) for task in tasks
        ]
    except (ValueError, FileNotFoundError) as e:
        print(f"countdown_breakdown.py: error: {e}", file=sys.stderr)
        return 2
    print("task         model    accuracy  equation-style  accuracy if fixed")
    for numbers, task, prepared in zip((3, 4), tasks, runs, strict=True):
        finetuner = prepared.finetuner
        for name, params in (("base", base), ("tuned", prepared.state.params)):
            result = finetuner.evaluate(params)
            b = style_breakdown(task, finetuner.splits.eval, result.completions)
            print(f"countdown-{numbers}  {name:7}  {b.accuracy:8.1%}  "
                  f"{b.equation_style:14.1%}  {b.accuracy_if_fixed:17.1%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
