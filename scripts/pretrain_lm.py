"""Pretrain the recurrent byte-level LM that the LLM environments ship with.

    python scripts/pretrain_lm.py                     # defaults: the shipped model
    python scripts/pretrain_lm.py --out DIR --steps 3000 --width 384

Backprop (optax AdamW) on an in-process synthetic corpus of worked Countdown and
chain-sum solutions (see `esrl.envs.llm.pretrain`); writes ``model.safetensors``,
``config.json`` (model shape, training settings, command, held-out accuracy) and a
README.md to ``--out`` (default: the package's ``envs/llm/weights``). While it trains,
``--out`` also holds a checkpoint (every logged step, and on Ctrl-C or SIGTERM); an
interrupted run continues with the same options and ``--resume``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

from esrl.envs.llm.evaluate import evaluate
from esrl.envs.llm.model import (
    WEIGHTS_DIR,
    LMConfig,
    RecurrentLM,
    count_params,
    save_model,
)
from esrl.envs.llm.pretrain import EVAL_POOL, PretrainConfig, pretrain
from esrl.envs.llm.tasks import countdown_task, make_splits

from esrl.checkpoint import checkpoint_path, has_checkpoint, read_meta


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults from `PretrainConfig` and `LMConfig`)."""
    p, m = PretrainConfig(), LMConfig()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=WEIGHTS_DIR,
        help="output directory; the default overwrites the shipped model",
    )
    parser.add_argument("--steps", type=int, default=p.steps, help="AdamW steps")
    parser.add_argument("--batch-size", type=int, default=p.batch_size,
                        help="sequences per step")  # fmt: skip
    parser.add_argument("--lr", type=float, default=p.lr, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=p.warmup, help="warmup steps")
    parser.add_argument("--seed", type=int, default=p.seed,
                        help="data order and initialisation")  # fmt: skip
    parser.add_argument("--time-limit", type=float, default=None,
                        help="stop after this many seconds of training, keep the "
                        "weights")  # fmt: skip
    parser.add_argument("--width", type=int, default=m.width, help="model width")
    parser.add_argument("--layers", type=int, default=m.layers,
                        help="minGRU blocks")  # fmt: skip
    parser.add_argument("--mlp-hidden", type=int, default=m.mlp_hidden,
                        help="hidden units of each block's MLP")  # fmt: skip
    parser.add_argument("--eval-size", type=int, default=200,
                        help=f"held-out problems (at most {EVAL_POOL}, the ones "
                        "pretraining excludes)")  # fmt: skip
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted pretraining in --out")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train, evaluate on held-out Countdown, save."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        if args.out.exists() and not args.out.is_dir():  # found only after training
            raise ValueError(f"--out {args.out} is a file, not a directory")
        if not 1 <= args.eval_size <= EVAL_POOL:
            # larger held-out sets would include problems the corpus trained on
            raise ValueError(
                f"--eval-size must be in [1, {EVAL_POOL}], got {args.eval_size}"
            )
        config = PretrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup=args.warmup,
            seed=args.seed,
            time_limit_s=args.time_limit,
        )
        model_config = LMConfig(
            width=args.width, layers=args.layers, mlp_hidden=args.mlp_hidden
        )
        check_resume(args, config)
        start = time.perf_counter()
        params, history = pretrain(
            config, model_config, log=lambda r: print(json.dumps(r), flush=True),
            checkpoint_dir=args.out,
        )  # fmt: skip
    except ValueError as e:
        print(f"pretrain_lm.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        again = argv if args.resume else [*argv, "--resume"]
        command = "python " + shlex.join(["scripts/pretrain_lm.py", *again])
        step = _checkpointed_step(args.out)
        when = "before the first step" if step is None else f"after step {step}"
        print(
            f"interrupted {when} of {config.steps}: the checkpoint in {args.out} "
            f"keeps it; continue with: {command}",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    train_s = time.perf_counter() - start
    model, heldout = RecurrentLM(model_config), {}
    for n in (3, 4):
        task = countdown_task(n)
        result = evaluate(
            model, params, task, make_splits(task, 0, 0, args.eval_size).eval
        )
        heldout[f"countdown-{n}_accuracy"] = result.accuracy
        print(f"held-out countdown-{n}: accuracy {result.accuracy:.3f}", flush=True)
    # the command that makes this model from scratch (a resume continued it)
    fresh = [a for a in argv if a != "--resume"]
    command = "python " + shlex.join(["scripts/pretrain_lm.py", *fresh])
    extra = {
        "command": command,
        "pretrain": {k: v for k, v in dataclasses.asdict(config).items()},
        "num_params": count_params(params),
        "final_loss": history[-1]["loss"],
        "steps_done": history[-1]["step"],
        "train_wall_time_s": round(train_s, 1),
        "heldout": heldout,
    }
    out = save_model(args.out, model_config, params, **extra)
    (out / "README.md").write_text(
        "# Shipped recurrent LM\n\n"
        f"Produced by `{command}` (seed {config.seed}) in {train_s / 60:.1f} min of "
        f"training on a shared 2-core CPU; {count_params(params)} parameters.\n"
        f"Held-out greedy accuracy ({args.eval_size} problems): "
        + ", ".join(f"{k} {v:.3f}" for k, v in heldout.items())
        + f".\nBy design {config.equation_fraction:.0%} of the Countdown answers in "
        "the corpus are written as equations (`expr=target`), which the reward "
        "rejects: room for ES (see the module esrl.envs.llm.pretrain).\n"
        "Layout: see the module `esrl.envs.llm.model` (config.json + model.safetensors).\n"
    )
    checkpoint_path(out).unlink(missing_ok=True)  # the model replaces it
    print(f"saved {out} ({train_s:.0f} s)")


def _checkpointed_step(out: Path) -> int | None:
    """The last step the checkpoint in ``out`` holds (None: no checkpoint)."""
    return read_meta(out)["step"] if has_checkpoint(out) else None


def check_resume(args: argparse.Namespace, config: PretrainConfig) -> None:
    """Refuse to start over an interrupted run, or to resume one that is not there."""
    step = _checkpointed_step(args.out)
    if step is not None and not args.resume:
        raise ValueError(
            f"--out {args.out} holds an interrupted pretraining (step {step} of "
            f"{config.steps}); continue it with the same options and --resume, or "
            f"remove {checkpoint_path(args.out)}"
        )
    if step is None and args.resume:
        raise ValueError(f"--resume: {args.out} holds no interrupted pretraining")


if __name__ == "__main__":
    main()
