"""Training-script presets: per-agent defaults layered over ``esrl train``.

A script in ``scripts/`` is a `Preset` and one call to `run_preset`: the preset names
the environment, the agent used when ``--agent`` is left out, and per agent the options
passed to ``esrl train`` unless the user gives them (ES agents also take the
per-environment defaults of `esrl.cli.PRESETS`). ``--help`` prints the preset values
and then every ``esrl train`` option of the chosen agent (of the run's, with
``--resume DIR``). With ``baseline=True`` a uniformly random policy is evaluated after
training with the run's evaluation settings (horizon, episodes and seed, but a key of
its own: not the trained policy's episodes), written to ``DIR/random_baseline.json``
and printed next to the final evaluation, achievements included where the env
reports them.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from esrl.checkpoint import has_checkpoint
from esrl.logger import BASELINE


@dataclass(frozen=True)
class Preset:
    """What a training script stands for."""

    env: str
    """Environment id trained when ``--env`` is left out."""
    name: str
    """Stem of the default run directory ``runs/<name>_<agent>``."""
    agent: str = "eggroll"
    """Agent trained when ``--agent`` is left out."""
    options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    """Per agent, ``esrl train`` options (``total_steps`` is ``--total-steps``) the
    script passes unless the user gives them; True/False become ``--x``/``--no-x``."""
    env_prefix: str = ""
    """Prepended to an ``--env`` value without a slash (``brax/``: ``--env ant``)."""
    baseline: bool = False
    """Evaluate a uniformly random policy with the run's settings after training."""


def _given(argv: list[str]) -> set[str]:
    """Option names the user passed (``--no-x`` counts as ``x``), underscored."""
    names = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=")[0].replace("-", "_")
            names.add(name.removeprefix("no_"))
    return names


def _flags(options: Mapping[str, object], skip: set[str]) -> list[str]:
    out = []
    for name, value in options.items():
        if name in skip or value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True or value is False:
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, str(value)]
    return out


def _pre_parse(argv: list[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for name in ("--agent", "--env", "--out", "--resume"):
        pre.add_argument(name)
    pre.add_argument("-h", "--help", action="store_true")
    try:
        return pre.parse_known_args(argv)[0]
    except argparse.ArgumentError:  # e.g. --env without a value
        from esrl.cli import build_parser

        # esrl train's parser says it, with its usage: this one's lists 5 options
        build_parser().parse_args(["train", *argv])
        raise


def env_id(preset: Preset, env: str | None) -> str:
    """The environment id an ``--env`` value (or its absence) stands for."""
    if env is None:
        return preset.env
    return env if "/" in env else preset.env_prefix + env


def default_out(preset: Preset, env: str, agent: str) -> str:
    """``runs/<name>_<agent>``; ``runs/<name>_<env>_<agent>`` for another env."""
    stem = preset.name
    if env != preset.env:
        stem += "_" + env.split("/")[-1].lower()
    return f"runs/{stem}_{agent}"


def _without_env(argv: list[str]) -> list[str]:
    """``argv`` less every ``--env`` the pre-parser read (abbreviated or repeated)."""
    rest, i = [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if len(name) > 2 and "--env".startswith(name):
            i += 1 if "=" in argv[i] else 2
        else:
            rest.append(argv[i])
            i += 1
    return rest


def preset_argv(preset: Preset, argv: list[str]) -> list[str]:
    """The ``esrl train`` argument list (after ``train``) a script's ``argv`` means."""
    known = _pre_parse(argv)
    env = env_id(preset, known.env)
    rest = _without_env(argv)  # the short name is replaced by the full id
    if known.resume:  # the run's own settings; a repeated --env must match them
        return (["--env", env] if known.env is not None else []) + rest
    agent = known.agent or preset.agent
    extra = ["--env", env, "--agent", agent] if known.agent is None else ["--env", env]
    if known.out is None:
        extra += ["--out", default_out(preset, env, agent), "--overwrite"]
    extra += _flags(preset.options.get(agent, {}), _given(argv))
    return [*extra, *rest]


def preset_help(preset: Preset, agent: str) -> str:
    """The preset's values for ``agent``, as printed before the ``esrl train`` help."""
    values = ", ".join(f"{k}={v}" for k, v in preset.options.get(agent, {}).items())
    lines = [
        (
            f"preset: --env {preset.env} --agent {preset.agent} --out "
            f"runs/{preset.name}_<agent> (replaced when --out is left out)"
        ),
        f"preset values for --agent {agent}: {values or 'none'}"
        + (" (plus the per-env defaults below)" if agent != "ppo" else ""),
    ]
    if preset.baseline:
        lines.append(
            "after training, a random policy is evaluated with the same settings: "
            f"DIR/{BASELINE}"
        )
    lines.append("options (those of `esrl train`; this script fills in the above):")
    return "\n".join(textwrap.fill(t, 88, subsequent_indent="  ") for t in lines)


def run_preset(preset: Preset, argv: list[str], doc: str = "") -> int:
    """A script's whole body: help, or train with the preset and report; exit status."""
    from esrl.cli import main

    known = _pre_parse(argv)
    if known.help:  # --resume DIR --help: the options of the run's agent
        from esrl.runs import run_agent

        agent = known.agent or run_agent(known.resume) or preset.agent
        print(doc.strip() + "\n\n" + preset_help(preset, agent) + "\n")
        try:
            return main(["train", "--agent", agent, "--help"])
        except SystemExit as e:
            return int(e.code or 0)
    args = preset_argv(preset, argv)
    status = main(["train", *args])
    if not preset.baseline or status not in (0, 130):
        return status
    out = known.resume or _pre_parse(args).out
    later = (
        f"run this script with --resume {shlex.quote(str(out))} to make it "
        "(esrl train does not)"
    )
    if status == 130:  # the run's message suggests esrl train --resume
        if has_checkpoint(out):  # none: interrupted before training, nothing to resume
            not_made = "the random-policy comparison was not made"
            print(f"{not_made}; {later}", file=sys.stderr)
        return status
    try:
        report_baseline(out)
    except KeyboardInterrupt:
        print(
            f"interrupted before the random-policy comparison; {later}", file=sys.stderr
        )
        return 130
    return 0


def random_baseline(
    env_id: str, horizon: int, episodes: int, seed: int = 0, env=None
) -> dict:
    """Mean return (and info, e.g. achievement rates) of a uniformly random policy.

    A zero-weight policy sampled stochastically: uniform over a Discrete space, N(0, 1)
    clipped to a Box. Episodes run like evaluations (``horizon`` steps, masked ends).
    """
    import jax
    import jax.numpy as jnp

    from esrl.policy import PolicySpec, make_policy
    from esrl.registry import make
    from esrl.rollout import RolloutConfig, evaluate_population

    env = make(env_id) if env is None else env
    env_params = env.default_params
    policy = make_policy(
        PolicySpec(),
        env.action_space(env_params),
        observation_space=env.observation_space(env_params),
    )
    key = jax.random.PRNGKey(seed)
    obs = jax.eval_shape(env.reset, key, env_params)[0]
    shapes = jax.eval_shape(policy.init, key, policy.initial_carry(), obs)["params"]
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    config = RolloutConfig(horizon=horizon, episodes=episodes, deterministic=False)
    result = evaluate_population(
        jax.random.fold_in(key, 2), env, env_params, policy, params, None, config,
        num_members=1,
    )  # fmt: skip
    out = {
        "eval_return": float(result.returns[0]),
        "eval_length": float(result.lengths[0]),
    }
    out.update({f"eval_{k}": v[0].tolist() for k, v in result.info.items()})
    return out


def _eval_settings(spec: dict) -> tuple[int, int, int]:
    """(horizon, episodes, seed) of a run's evaluations, ES or PPO spec."""
    if spec.get("agent") == "ppo":
        return spec["eval_horizon"], spec["eval_episodes"], spec["seed"]
    train = spec["train"]
    return train["rollout"]["horizon"], train["eval_episodes"], train["seed"]


def _names(env: str, n: int) -> list[str]:
    if env.startswith("craftax/"):
        from esrl.envs.craftax import achievement_names

        return list(achievement_names(env.split("/", 1)[1]))
    return [str(i) for i in range(n)]


def report_baseline(out_dir: str | Path) -> dict:
    """Evaluate the random baseline of the run in ``out_dir``, save it and print it."""
    from esrl.checkpoint import read_meta
    from esrl.cli import import_plugins
    from esrl.logger import read_metrics, write_json_atomic

    spec = read_meta(out_dir)["spec"]
    import_plugins(tuple(spec.get("plugins", ())), out_dir)
    horizon, episodes, seed = _eval_settings(spec)
    base = random_baseline(spec["env"], horizon, episodes, seed)
    base.update(env=spec["env"], horizon=horizon, episodes=episodes, seed=seed)
    write_json_atomic(Path(out_dir) / BASELINE, base)
    evals = [r for r in read_metrics(out_dir) if r.get("eval_return") is not None]
    trained = evals[-1] if evals else {}
    print(
        f"random policy, same evaluation ({episodes} episodes x {horizon} steps): "
        f"return {base['eval_return']:.2f}; trained policy: "
        f"{trained.get('eval_return', float('nan')):.2f}"
    )
    rates = base.get("eval_achievements")
    if rates is not None:
        if trained.get("eval_achievements") is None:  # PPO logs the return only
            from esrl.evaluate import evaluate_run

            trained = evaluate_run(out_dir)  # the same evaluation, info included
        mine = trained["eval_achievements"]
        names = _names(spec["env"], len(rates))
        rows = [
            f"  {n:<22} {t:5.2f} {r:5.2f}"
            for n, t, r in zip(names, mine, rates, strict=True)
            if t > 0 or r > 0
        ]
        print(
            f"achievements unlocked per episode: trained {sum(mine):.2f}, random "
            f"{sum(rates):.2f}\n  {'achievement':<22} trained random\n"
            + "\n".join(rows)
        )
    print(f"baseline written to {Path(out_dir) / BASELINE}")
    return base
