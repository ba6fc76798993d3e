"""The ``esrl`` command line: ``esrl envs``, ``esrl train`` and ``esrl eval``.

``esrl envs`` lists environments; ``esrl eval DIR`` evaluates a trained run again
(`esrl.evaluate`).

``esrl train --env ID --agent {eggroll,openai_es}`` trains with evolution strategies;
options left out take per-environment defaults (`env_defaults`, listed in ``--help``).
``--generations`` is the total: ``--resume DIR --generations 6`` after a 3-generation
run trains generations 4-6 and appends to DIR. Every bad input is reported before
anything is compiled. Other agents (``ppo``) are routed to their own runner
(`EXTERNAL_AGENTS`), which receives the same argument list.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from esrl.es import OPTIMIZERS
from esrl.fitness import SHAPERS
from esrl.nn import CELLS

POLICIES = ("mlp", *CELLS)
ES_AGENTS = ("eggroll", "openai_es")
OUT_HELP = (
    "run directory (default runs/<env>/{agent}-s<seed>; a scripts/train_*.py preset's: "
    "runs/<name>_{agent}, replaced)"
)
"""``--out``'s help, shared by ES and PPO; a preset script prints it too."""
EXTERNAL_AGENTS: dict[str, str] = {"ppo": "esrl.train_ppo:main"}
"""Agents with their own runner ``module:function``, called as ``fn(argv) -> int``."""

DEFAULTS: dict[str, object] = {
    "policy": "mlp", "hidden": 64, "population": 256, "rank": 1, "sigma": 0.05,
    "lr": 0.05, "generations": 100, "seed": 0, "horizon": None, "episodes": 1,
    "eval_every": 10, "eval_episodes": 16, "checkpoint_every": 50,
    "normalize_obs": False, "common_random_numbers": False, "deterministic": True,
    "optimizer": "adam", "fitness_shaping": "centered_ranks", "weight_decay": 0.0,
    "sigma_decay": 1.0, "sigma_min": 0.0, "lr_decay": 1.0,
}  # fmt: skip
"""Defaults of every environment; ``horizon`` None means the env's own time limit."""

PRESETS: dict[str, dict[str, object]] = {
    "gymnax/": {},
    "gymnax/CartPole-v1": {
        "hidden": 32, "generations": 30, "eval_every": 5, "eval_episodes": 32,
    },
    "gymnax/Pendulum-v1": {
        "episodes": 8, "generations": 400, "eval_every": 10, "eval_episodes": 64,
    },
    "gymnax/Breakout-MinAtar": {
        "rank": 3, "sigma": 0.1, "episodes": 2, "generations": 1000, "eval_every": 100,
        "eval_episodes": 32,
    },
    "brax/": {
        "normalize_obs": True, "hidden": 64, "population": 512, "sigma": 0.02,
        "lr": 0.02, "horizon": 1000, "generations": 500,
    },
    "brax/inverted_double_pendulum": {
        "population": 256, "sigma": 0.05, "lr": 0.02, "generations": 150,
        "eval_every": 25, "eval_episodes": 8, "checkpoint_every": 25,
    },
    "craftax/": {
        "policy": "gru", "hidden": 64, "population": 64, "lr": 0.02, "horizon": 300,
        "generations": 40, "eval_every": 10, "eval_episodes": 32,
        "checkpoint_every": 10, "deterministic": False,
    },
}  # fmt: skip
"""Per-environment overrides: an exact id wins over its family prefix (``brax/``)."""


def env_defaults(env_id: str) -> dict[str, object]:
    """DEFAULTS updated by the family preset, then by the preset of ``env_id``."""
    values = dict(DEFAULTS)
    values.update(PRESETS.get(env_id.split("/")[0] + "/", {}))
    values.update(PRESETS.get(env_id, {}))
    return values


def count(n: int, noun: str) -> str:
    """``1 generation``, ``2 generations``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def option_text(name: str, value) -> str:
    """How ``value`` is given on the command line: --lr 0.001, --no-normalize-obs."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"no --{flag}" if value is None else f"--{flag} {value}"


def refused_on_resume(name: str, given, stored, run_dir) -> ValueError:
    """The error of a resume given an option that differs from the run's setting."""
    plain = stored is not None and not isinstance(stored, bool)
    return ValueError(
        f"{option_text(name, given)} differs from the run in {run_dir} "
        f"({stored if plain else option_text(name, stored)}); drop it when resuming"
    )


def import_plugins(modules: tuple[str, ...], run_dir: str | Path | None = None) -> None:
    """Import modules that register user environments (the working dir is importable).

    ``run_dir``: the stored run that names them (a resume, an evaluation), for a message
    that says where they can be imported from.
    """
    if modules and "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    for name in modules:
        if name.endswith(".py") or "/" in name:
            stem = name.rsplit("/", 1)[-1].removesuffix(".py")
            raise ValueError(
                f"--plugin {name!r} is a path; pass a module name (--plugin {stem} "
                f"imports {stem}.py from the working directory)"
            )
        try:
            importlib.import_module(name)
        except ImportError as e:
            if run_dir is not None and e.name == name:
                raise ValueError(
                    f"the run in {run_dir} registers its environment with --plugin "
                    f"{name}, which cannot be imported from {Path.cwd()} ({e}); run "
                    "in the directory it was trained in, or add the plugin's directory "
                    "to PYTHONPATH"
                ) from e
            inner = e.name not in (None, name) and not name.startswith(f"{e.name}.")
            if isinstance(e, ModuleNotFoundError) and inner:
                raise ValueError(  # the plugin was found; a module it imports was not
                    f"--plugin {name!r} imports {e.name!r}, which is not installed"
                ) from e
            raise ValueError(
                f"--plugin {name!r} could not be imported ({e}); pass an importable "
                "module name (a file my_envs.py in the working directory is my_envs)"
            ) from e


def _envs(args: argparse.Namespace) -> int:
    import esrl

    try:
        import_plugins(tuple(args.plugin))
    except ValueError as e:
        print(f"esrl envs: error: {e}", file=sys.stderr)
        return 2
    for env_id in esrl.list_envs():
        if args.filter in env_id:
            print(env_id)
    return 0


def _epilog() -> str:
    def line(name: str, values: dict) -> str:
        text = ", ".join(f"{k}={v}" for k, v in values.items())
        return textwrap.fill(f"{name}: {text}", 88, initial_indent="  ",
                             subsequent_indent="      ")  # fmt: skip

    lines = ["per-environment defaults (override any with its option):"]
    lines.append(line("all", DEFAULTS))
    lines += [line(env_id, values) for env_id, values in PRESETS.items() if values]
    lines.append("--agent ppo has its own options: esrl train --agent ppo --help")
    return "\n".join(lines)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train an agent: EGGROLL, OpenAI-ES or PPO",
        description="Train a policy with EGGROLL or OpenAI-ES (PPO's options: "
        "esrl train --agent ppo --help).", epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    a = p.add_argument
    a("--env", help="environment id (esrl envs lists them); not needed with --resume")
    a("--agent", choices=ES_AGENTS + tuple(EXTERNAL_AGENTS), default=None,
      help="eggroll (low-rank ES, default), openai_es (full-rank ES) or ppo")  # fmt: skip
    a("--policy", choices=POLICIES, help="policy torso (default mlp)")
    a("--hidden", type=int, metavar="H", help="hidden width")
    a("--population", type=int, metavar="N", help="members per generation (even)")
    a("--rank", type=int, metavar="R", help="EGGROLL perturbation rank")
    a("--sigma", type=float, metavar="S", help="perturbation scale")
    a("--lr", type=float, metavar="LR", help="learning rate")
    a("--optimizer", choices=OPTIMIZERS, help="optax optimizer (default adam)")
    a("--weight-decay", type=float, metavar="W", help="weight decay (default 0)")
    a("--fitness-shaping", choices=tuple(SHAPERS),
      help="how returns become weights (default centered_ranks)")  # fmt: skip
    a("--sigma-decay", type=float, metavar="D", help="sigma *= D every generation ...")
    a("--sigma-min", type=float, metavar="S", help="... but never below S (default 0)")
    a("--lr-decay", type=float, metavar="D", help="learning rate *= D every generation")
    a("--generations", type=int, metavar="G", help="total generations (resumes too)")
    a("--seed", type=int, metavar="S", help="random seed (default 0)")
    a("--out", metavar="DIR", help=OUT_HELP.format(agent="<agent>"))
    a("--resume", metavar="DIR", help="continue the run in DIR up to --generations")
    a("--plugin", action="append", default=[], metavar="MODULE",
      help="import MODULE first (it registers your environments); repeatable")  # fmt: skip
    a("--horizon", type=int, metavar="T", help="steps per episode (default: env limit)")
    a("--episodes", type=int, metavar="E", help="episodes per member")
    a("--eval-every", type=int, metavar="K", help="evaluate the mean policy every K")
    a("--eval-episodes", type=int, metavar="M", help="episodes per evaluation")
    a(
        "--checkpoint-every",
        type=int,
        metavar="K",
        help="checkpoint every K generations",
    )
    a("--normalize-obs", action=argparse.BooleanOptionalAction,
      help="normalise observations with shared running statistics")  # fmt: skip
    a("--common-random-numbers", action=argparse.BooleanOptionalAction,
      help="all members of a generation see the same environment keys")  # fmt: skip
    a("--deterministic", action=argparse.BooleanOptionalAction,
      help="greedy actions; --no-deterministic samples them (training and eval)")  # fmt: skip
    a("--devices", type=int, metavar="D", help="split members over D devices (all)")
    a("--block", type=int, metavar="B",
      help="roll out B members of a device at a time (CPU: up to 2048; else all)")  # fmt: skip
    a("--distributed", action="store_true",
      help="multi-host: call jax.distributed.initialize() first")  # fmt: skip
    a("--tensorboard", action=argparse.BooleanOptionalAction,
      help="also write TensorBoard scalars to DIR/tb (a resume keeps the run's)")  # fmt: skip
    a(
        "--overwrite",
        action="store_true",
        help="start afresh in a --out that holds a run (its checkpoint, metrics, "
        "summary and curve are removed when the new run starts)",
    )
    a("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def _version() -> str:
    import jax

    from esrl import __version__

    return f"esrl {__version__} (jax {jax.__version__})"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(prog="esrl", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    envs = sub.add_parser("envs", help="list registered environment ids")
    envs.add_argument("filter", nargs="?", default="", help="only ids containing this")
    envs.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                      help="import MODULE first (it registers environments)")  # fmt: skip
    envs.set_defaults(func=_envs)
    _add_train(sub)
    ev = sub.add_parser("eval", help="evaluate the policy of a trained run again")
    ev.add_argument("run_dir", metavar="DIR", help="the run's --out directory")
    ev.add_argument("--episodes", type=int, help="episodes (default: the run's own)")
    ev.add_argument("--seed", type=int, help="a fresh key (default: the run's own)")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.set_defaults(func=_eval)
    return parser


def _eval(args: argparse.Namespace) -> int:
    import json

    from esrl.evaluate import evaluate_run
    from esrl.logger import to_json  # NaN as null: strict JSON, as in metrics.jsonl

    try:
        r = evaluate_run(args.run_dir, args.episodes, args.seed)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"esrl eval: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(to_json(r), allow_nan=False) if args.json else (
        f"{r['agent']} on {r['env']} after {r['step']} "
        f"{'updates' if r['agent'] == 'ppo' else 'generations'}: eval return "
        f"{r['eval_return']:.2f} +- {r['return_std']:.2f} (min {r['return_min']:.2f}, "
        f"max {r['return_max']:.2f}) over {r['episodes']} episodes of up to "
        f"{r['horizon']} steps, mean length {r['eval_length']:.1f}"
    ))  # fmt: skip
    return 0


def _external(agent: str) -> Callable[[list[str]], int]:
    module, _, fn = EXTERNAL_AGENTS[agent].partition(":")
    runner = getattr(importlib.import_module(module), fn, None)
    if runner is None:
        raise ValueError(f"agent {agent!r} is not available: {module} has no {fn}()")
    return runner


def _train(args: argparse.Namespace) -> int:
    from esrl import distributed
    from esrl.cli_spec import resume_spec, spec_from_args
    from esrl.train import fit, prepare

    if args.distributed:
        try:
            distributed.initialize()
        except (ValueError, RuntimeError) as e:  # no cluster found, or none answered
            print(
                f"esrl train: error: --distributed could not join a multi-host run "
                f"({e}); launch it on every host with a launcher JAX detects (Slurm, "
                "Open MPI, Cloud TPU), or drop --distributed",
                file=sys.stderr,
            )
            return 2

    def report(spec, summary: dict) -> str:
        return (
            f"{spec.agent} on {spec.env}: {count(summary['generations'], 'generation')}"
        )

    return run_command(
        args, spec_from_args, resume_spec, prepare, fit, report,
        default_out=lambda spec: f"runs/{spec.env}/{spec.agent}-s{spec.train.seed}",
    )  # fmt: skip


def run_command(
    args: argparse.Namespace,
    spec_from_args: Callable,
    resume_spec: Callable,
    prepare: Callable,
    fit: Callable,
    report: Callable,
    default_out: Callable,
) -> int:
    """Build the spec (fresh or resumed), validate, train and print the outcome.

    Shared by ES and PPO: bad input prints one ``error:`` line and returns 2 before
    anything compiles; Ctrl-C or SIGTERM returns 130 once the run has saved its
    checkpoint (or, before training started, written nothing) and said how to go on.
    """
    from esrl.logger import RunDirBusy
    from esrl.runs import report_unstarted, sigterm_as_interrupt

    with sigterm_as_interrupt():  # from the start: setting up compiles too
        try:
            prepared, spec, out = _prepare(
                args, spec_from_args, resume_spec, prepare, default_out
            )
        except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"esrl train: error: {msg}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # nothing is written before fit
            totals = ("generations", "total_steps")  # ES's or PPO's, where given
            given = [(k, getattr(args, k)) for k in totals if getattr(args, k, None)]
            report_unstarted(
                args.resume, " ".join(f"--{k.replace('_', '-')} {v}" for k, v in given)
            )
            return 130
        try:
            summary = fit(prepared).summary
        except KeyboardInterrupt:  # fit said what it saved
            return 130
        except RunDirBusy as e:  # taken while this process compiled: nothing written
            print(f"esrl train: error: {e}", file=sys.stderr)
            return 2
    final = summary["final_eval_return"]  # None: the evaluation was not finite
    print(
        f"{report(spec, summary)}: eval return "
        f"{'nan' if final is None else f'{final:.2f}'}, "
        f"{summary['env_steps']:,} env steps, {summary['wall_time_s']:.1f} s "
        f"(compile {summary['compile_s']:.1f} s); outputs in {out}"
    )
    return 0


def _prepare(args, spec_from_args, resume_spec, prepare, default_out) -> tuple:
    """`run_command`'s checks and set-up: (prepared run, spec, run directory)."""
    from esrl.checkpoint import read_meta
    from esrl.runs import raise_if_interrupted

    import_plugins(tuple(args.plugin))
    if args.resume:
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise ValueError("--resume DIR continues in DIR; drop --out")
        if args.overwrite:
            raise ValueError(
                "--resume continues the run and --overwrite replaces it; "
                "pass one of them"
            )
        spec = resume_spec(args, read_meta(args.resume))
    else:
        spec = spec_from_args(args)
    out = args.resume or args.out or default_out(spec)
    prepared = prepare(spec, out, resume=bool(args.resume), overwrite=args.overwrite)
    raise_if_interrupted()  # a signal whose interrupt was dropped while setting up
    return prepared, spec, out


def _route(argv: list[str]) -> Callable[[list[str]], int] | None:
    """The external runner ``esrl train`` should hand ``argv`` to, if any."""
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--agent")
    pre.add_argument("--resume")
    try:
        known, _ = pre.parse_known_args(argv)
    except argparse.ArgumentError:  # e.g. --agent without a value: esrl train says so
        return None
    from esrl.runs import run_agent

    agent = known.agent or run_agent(known.resume)
    return _external(agent) if agent in EXTERNAL_AGENTS else None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``esrl`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        try:
            runner = _route(argv[1:])
        except ValueError as e:
            print(f"esrl train: error: {e}", file=sys.stderr)
            return 2
        if runner is not None:
            return runner(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
