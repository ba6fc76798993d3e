"""Fine-tune the shipped recurrent LM on Countdown with evolution strategies.

    python scripts/train_countdown.py --out runs/countdown            # EGGROLL
    python scripts/train_countdown.py --agent openai_es --out runs/oes
    python scripts/train_countdown.py --resume runs/countdown          # continue
    python scripts/train_countdown.py --out runs/countdown --overwrite # start afresh

Greedy decoding, rewards normalised per prompt across the population, held-out
accuracy on a fixed set measured before and after (``summary.json``:
``eval_accuracy_initial``, ``final_eval_accuracy``). ``--model DIR`` starts from your
own checkpoint (config.json + model.safetensors, see ``esrl.envs.llm.model``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from esrl.agents.eggroll import EggrollConfig
from esrl.agents.openai_es import OpenAIESConfig
from esrl.envs.llm.finetune import FinetuneConfig
from esrl.envs.llm.model import DEFAULT_EXCLUDE
from esrl.envs.llm.tasks import countdown_task
from esrl.envs.llm.train import RunConfig, prepare_finetune, train_prepared

from esrl.checkpoint import has_checkpoint, read_meta
from esrl.runs import sigterm_as_interrupt

DEFAULTS = {"population": 32, "sigma": 0.005, "lr": 3e-4, "rank": 1}
"""ES defaults for the shipped model (see the README for the measured run)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    f = FinetuneConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent", choices=("eggroll", "openai_es"), default="eggroll")
    parser.add_argument(
        "--out", type=Path, help="run directory (required unless --resume)"
    )
    parser.add_argument(
        "--resume", type=Path, help="continue the run in this directory"
    )
    parser.add_argument(
        "--numbers",
        type=int,
        default=3,
        choices=(3, 4),
        help="Countdown numbers: llm/countdown-3 or llm/countdown-4",
    )
    parser.add_argument(
        "--model", default=None, help="checkpoint dir (default: shipped)"
    )
    parser.add_argument("--generations", type=int, default=None,
                        help=f"default {f.generations}; with --resume, the saved "
                        "run's")  # fmt: skip
    parser.add_argument("--population", type=int, default=DEFAULTS["population"])
    parser.add_argument("--prompts", type=int, default=f.prompts_per_generation)
    parser.add_argument("--sigma", type=float, default=DEFAULTS["sigma"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    parser.add_argument("--rank", type=int, default=DEFAULTS["rank"])
    parser.add_argument("--perturb-all", action="store_true",
                        help="also perturb the embedding and head")  # fmt: skip
    parser.add_argument("--eval-size", type=int, default=f.eval_size)
    parser.add_argument("--train-size", type=int, default=f.train_size)
    parser.add_argument("--skip-train", type=int, default=f.skip_train,
                        help="skip the train problems pretraining saw")  # fmt: skip
    parser.add_argument("--eval-every", type=int, default=f.eval_every)
    parser.add_argument("--seed", type=int, default=f.seed)
    parser.add_argument("--time-limit", type=float, default=None, help="seconds")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an --out that holds a run (its "
                        "checkpoint, metrics, summary and curve are removed when the "
                        "new run starts)")  # fmt: skip
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")  # fmt: skip
    args = parser.parse_args(argv)
    if args.resume is None and args.out is None:
        parser.error("pass --out DIR for a new run or --resume DIR to continue one")
    if args.resume is not None:  # the saved configuration is used as it is
        # parsed again into unset values: an option given with its default value
        # (--numbers 3 on a Countdown-4 run) would be ignored as well
        unset = object()
        again = parser.parse_args(
            argv, argparse.Namespace(**dict.fromkeys(vars(args), unset))
        )
        given = [k for k, v in vars(again).items() if v is not unset]
        ignored = [k for k in given if k not in ("resume", "generations", "progress")]
        if ignored:
            parser.error(
                f"--{ignored[0].replace('_', '-')} cannot be used with --resume (the "
                "saved run's settings are kept; only --generations may change)"
            )
    return args


def build(args: argparse.Namespace) -> RunConfig:
    """The run configuration the options describe."""
    common = {
        "population": args.population,
        "sigma": args.sigma,
        "lr": args.lr,
        "fitness_shaping": "raw",  # fitness arrives already normalised per prompt group
        "exclude": () if args.perturb_all else DEFAULT_EXCLUDE,
    }
    if args.agent == "eggroll":
        agent_config = EggrollConfig(rank=args.rank, **common)
    else:
        agent_config = OpenAIESConfig(**common)
    gens = args.generations
    finetune = FinetuneConfig(
        generations=FinetuneConfig().generations if gens is None else gens,
        prompts_per_generation=args.prompts,
        eval_size=args.eval_size,
        eval_every=args.eval_every,
        train_size=args.train_size,
        skip_train=args.skip_train,
        seed=args.seed,
        time_limit_s=args.time_limit,
    )
    env = f"llm/countdown-{args.numbers}"
    return RunConfig(env, args.agent, agent_config, finetune, args.model)


def resumed(path: Path, generations: int | None) -> RunConfig:
    """The configuration saved in ``path``, run up to ``generations`` if one is given."""
    meta = read_meta(path)
    if not {"agent_config", "finetune"} <= meta.keys():  # an esrl train run, say
        raise ValueError(
            f"{str(path)!r} holds no train_countdown.py run (esrl train's runs "
            "continue with esrl train --resume); pass a train_countdown.py --out"
        )
    saved = {**meta["agent_config"], "exclude": tuple(meta["agent_config"]["exclude"])}
    config_cls = EggrollConfig if meta["agent"] == "eggroll" else OpenAIESConfig
    finetune = meta["finetune"]
    if generations is not None:
        finetune = {**finetune, "generations": generations}
    return RunConfig(meta["env"], meta["agent"], config_cls(**saved),
                     FinetuneConfig(**finetune), meta["model_dir"])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse, validate (bad input: one ``error:`` line, exit 2), run, print the summary."""
    args = parse_args(argv)
    resume, out = args.resume is not None, args.resume or args.out
    # an extension's total: until it saves, the checkpoint holds the shorter run's
    total = f" --generations {args.generations}" if args.generations else ""
    try:
        run = resumed(args.resume, args.generations) if resume else build(args)
        task = countdown_task(int(run.env.rsplit("-", 1)[1]))
        prepared = prepare_finetune(
            run, task, out, resume,
            overwrite=args.overwrite, progress=args.progress,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        print(f"train_countdown.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # loading the model, drawing the splits
        again = f"continue with --resume {out}{total}" if resume else "start again"
        print(f"interrupted before training started; nothing was written, {again}")
        return 130
    try:
        with sigterm_as_interrupt():  # a killed run checkpoints, as on Ctrl-C
            summary = train_prepared(prepared)
    except KeyboardInterrupt:
        # until a fresh run saves, a checkpoint in --out is the run --overwrite replaces
        if has_checkpoint(out) and (resume or prepared.recorder.saved is not None):
            print(f"interrupted; continue with --resume {out}{total}")
        else:  # e.g. during the initial evaluation
            print("interrupted before the first checkpoint; start again")
        return 130
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
