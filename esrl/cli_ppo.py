"""``esrl train --agent ppo``: the PPO options of the command line.

``esrl train`` hands every PPO run (and every ``--resume`` of one) to `main` with its
argument list. ``--total-steps`` is the total: ``--resume DIR --total-steps N`` after a
shorter run continues it to N steps and appends to DIR. Options left out take
`esrl.agents.ppo.PPOConfig`'s defaults (rejax's CartPole settings), and every bad input
is reported before anything is compiled.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from esrl.checks import require_value
from esrl.cli import OUT_HELP, POLICIES, count, refused_on_resume, run_command

DEFAULTS: dict[str, object] = {
    "policy": "mlp", "hidden": 64, "seed": 0, "eval_every": 10, "eval_episodes": 16,
    "horizon": 1000, "normalize_obs": False, "normalize_reward": False,
}  # fmt: skip
"""Run defaults; the PPO hyperparameters default to `PPOConfig`'s."""
PPO_FIELDS = (
    "total_steps", "num_envs", "num_steps", "update_epochs", "num_minibatches", "lr",
    "gamma", "ent_coef", "normalize_obs", "normalize_reward", "reset_pool",
)  # fmt: skip
"""Options that map one to one onto `PPOConfig` fields."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``esrl train --agent ppo``."""
    p = argparse.ArgumentParser(
        prog="esrl train --agent ppo", description="Train a policy with PPO."
    )
    a = p.add_argument
    a("--env", help="environment id (esrl envs lists them); not needed with --resume")
    a("--agent", choices=("ppo",), default="ppo", help="ppo")
    a("--policy", choices=POLICIES, help="policy torso (default mlp)")
    a("--hidden", type=int, metavar="H", help="hidden width (default 64)")
    a("--total-steps", type=int, metavar="N",
      help="total env steps, resumes included (500000)")  # fmt: skip
    a("--num-envs", type=int, metavar="E", help="parallel environments (16)")
    a("--num-steps", type=int, metavar="T", help="rollout length per update (128)")
    a("--update-epochs", type=int, metavar="K", help="epochs per update (4)")
    a("--num-minibatches", type=int, metavar="M", help="minibatches per epoch (4)")
    a("--lr", type=float, metavar="LR", help="Adam learning rate (2.5e-3)")
    a("--gamma", type=float, help="discount (0.99)")
    a("--ent-coef", type=float, help="entropy bonus weight (0.01)")
    a("--normalize-obs", action=argparse.BooleanOptionalAction,
      help="normalise observations with running statistics")  # fmt: skip
    a("--normalize-reward", action=argparse.BooleanOptionalAction,
      help="scale rewards by the running std of the discounted return")  # fmt: skip
    a("--reset-pool", type=int, metavar="K",
      help="reset finished envs from K fresh reset states per step instead of one "
      "reset each (Craftax: a reset costs ~6 ms; default: one each)")  # fmt: skip
    a("--seed", type=int, metavar="S", help="random seed (default 0)")
    a("--eval-every", type=int, metavar="K", help="updates between evaluations (10)")
    a("--eval-episodes", type=int, metavar="M", help="episodes per evaluation (16)")
    a("--horizon", type=int, metavar="T", help="evaluation step limit (1000)")
    a("--out", metavar="DIR", help=OUT_HELP.format(agent="ppo"))
    a("--resume", metavar="DIR", help="continue the run in DIR up to --total-steps")
    a("--overwrite", action="store_true",
      help="start afresh in a --out that holds a run (its checkpoint, metrics, "
      "summary and curve are removed when the new run starts)")  # fmt: skip
    a("--plugin", action="append", default=[], metavar="MODULE",
      help="import MODULE first (it registers your environments); repeatable")  # fmt: skip
    a("--tensorboard", action=argparse.BooleanOptionalAction,
      help="also write TensorBoard scalars to DIR/tb (a resume keeps the run's)")  # fmt: skip
    a("--no-progress", action="store_true", help="no progress bar")
    return p


def spec_from_args(args: argparse.Namespace):
    """A `esrl.train_ppo.PPORunSpec` from parsed options and the defaults."""
    from esrl.agents.ppo import PPOConfig
    from esrl.policy import PolicySpec
    from esrl.train_ppo import PPORunSpec

    if not args.env:
        raise ValueError("--env is required (esrl envs lists the ids)")
    v = {**DEFAULTS, **{k: x for k, x in vars(args).items() if x is not None}}
    require_value("horizon", v["horizon"], ">= 1")  # named as the option, not the field
    ppo = PPOConfig(
        **{k: v[k] for k in PPO_FIELDS if k in v},
        policy=PolicySpec(kind=v["policy"], hidden=v["hidden"]),
    )
    return PPORunSpec(
        env=args.env, ppo=ppo, eval_every=v["eval_every"],
        eval_episodes=v["eval_episodes"], eval_horizon=v["horizon"], seed=v["seed"],
        plugins=tuple(args.plugin), progress=not args.no_progress,
        tensorboard=bool(args.tensorboard),
    )  # fmt: skip


def resume_spec(args: argparse.Namespace, meta: dict):
    """The checkpoint's spec with a new total; any other differing option is an error."""
    from esrl.train_ppo import PPORunSpec

    agent = meta["spec"].get("agent")
    if agent != "ppo":
        raise ValueError(
            f"--agent ppo differs from the run in {args.resume} ({agent}); "
            "drop it when resuming"
        )
    saved = PPORunSpec.from_dict(meta["spec"])
    stored = {
        "env": saved.env, "policy": saved.ppo.policy.kind,
        "hidden": saved.ppo.policy.hidden, "seed": saved.seed,
        "eval_every": saved.eval_every, "eval_episodes": saved.eval_episodes,
        "horizon": saved.eval_horizon,
        **{k: getattr(saved.ppo, k) for k in PPO_FIELDS if k != "total_steps"},
    }  # fmt: skip
    for name, value in stored.items():
        given = getattr(args, name, None)
        if given is not None and given != value:
            raise refused_on_resume(name, given, value, args.resume)
    done = meta.get("counters", {}).get("env_steps", 0)
    if args.total_steps is not None and args.total_steps < done:
        raise ValueError(
            f"--total-steps {args.total_steps} is fewer than the {done} env steps the "
            f"run in {args.resume} has done; --total-steps is the total"
        )
    ppo = saved.ppo
    if args.total_steps is not None:
        ppo = dataclasses.replace(ppo, total_steps=args.total_steps)
    plugins = tuple(dict.fromkeys(saved.plugins + tuple(args.plugin)))
    tensorboard = saved.tensorboard if args.tensorboard is None else args.tensorboard
    return dataclasses.replace(
        saved, ppo=ppo, plugins=plugins, progress=not args.no_progress,
        tensorboard=tensorboard,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``esrl train --agent ppo`` (``argv`` follows ``train``)."""
    from esrl.train_ppo import fit, prepare

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)

    def report(spec, summary: dict) -> str:
        return f"ppo on {spec.env}: {count(summary['updates'], 'update')}"

    return run_command(
        args, spec_from_args, resume_spec, prepare, fit, report,
        default_out=lambda spec: f"runs/{spec.env}/ppo-s{spec.seed}",
    )  # fmt: skip
