"""``esrl train --agent {eggroll,openai_es}``: the run spec from the command line.

`spec_from_args` builds a fresh `esrl.train.RunSpec` from the parsed options and the
environment's defaults (`esrl.cli.env_defaults`); `resume_spec` takes the spec stored
in a checkpoint with a new ``--generations`` total and reports any other option that
differs from it. `esrl.cli.run_command` calls one of them; PPO has its own pair in
`esrl.cli_ppo`.
"""

from __future__ import annotations

import argparse
import dataclasses

from esrl.cli import env_defaults, refused_on_resume

_ES_OPTIONS = ("population", "sigma", "lr", "optimizer", "weight_decay",
               "fitness_shaping", "sigma_decay", "sigma_min", "lr_decay")  # fmt: skip
"""Options both ES agents take (fields of `esrl.es.AgentConfig`)."""

# option name -> where it lives in a RunSpec (for --resume consistency checks)
_SPEC_FIELDS = {
    "env": ("env",), "agent": ("agent",), "policy": ("train", "policy", "kind"),
    "hidden": ("train", "policy", "hidden"),
    "population": ("agent_config", "population"), "rank": ("agent_config", "rank"),
    **{name: ("agent_config", name) for name in _ES_OPTIONS},
    "seed": ("train", "seed"), "horizon": ("train", "rollout", "horizon"),
    "episodes": ("train", "rollout", "episodes"),
    "eval_every": ("train", "eval_every"),
    "eval_episodes": ("train", "eval_episodes"),
    "checkpoint_every": ("train", "checkpoint_every"),
    "normalize_obs": ("train", "rollout", "normalize_obs"),
    "common_random_numbers": ("train", "rollout", "common_random_numbers"),
    "deterministic": ("train", "rollout", "deterministic"),
}  # fmt: skip


def _lookup(tree: dict, path: tuple[str, ...]):
    for k in path:
        tree = tree.get(k) if isinstance(tree, dict) else None
    return tree


def spec_from_args(args: argparse.Namespace):
    """A `esrl.train.RunSpec` from parsed options and the environment's defaults."""
    from esrl.agents.eggroll import EggrollConfig
    from esrl.agents.openai_es import OpenAIESConfig
    from esrl.policy import PolicySpec
    from esrl.rollout import RolloutConfig
    from esrl.train import RunSpec, TrainConfig

    if not args.env:
        raise ValueError("--env is required (esrl envs lists the ids)")
    agent = args.agent or "eggroll"
    v = env_defaults(args.env)
    v.update({k: x for k, x in vars(args).items() if k in v and x is not None})
    es = {k: v[k] for k in _ES_OPTIONS}
    if agent == "eggroll":
        agent_config = EggrollConfig(rank=v["rank"], **es)
    elif args.rank is not None:
        raise ValueError("--rank applies to eggroll only; drop it for openai_es")
    else:
        agent_config = OpenAIESConfig(**es)
    rollout = RolloutConfig(
        horizon=_env_horizon(args.env) if v["horizon"] is None else v["horizon"],
        episodes=v["episodes"],
        normalize_obs=v["normalize_obs"],
        common_random_numbers=v["common_random_numbers"],
        deterministic=v["deterministic"],
    )  # fmt: skip
    train = TrainConfig(
        generations=v["generations"], eval_every=v["eval_every"],
        eval_episodes=v["eval_episodes"], checkpoint_every=v["checkpoint_every"],
        seed=v["seed"], num_devices=args.devices, block=args.block, rollout=rollout,
        policy=PolicySpec(kind=v["policy"], hidden=v["hidden"]),
        progress=not args.no_progress, tensorboard=bool(args.tensorboard),
    )  # fmt: skip
    return RunSpec(args.env, agent, agent_config, train, tuple(args.plugin))


def _env_horizon(env_id: str) -> int:
    """The environment's own time limit, else 1000."""
    import esrl

    env = esrl.make(env_id)
    params = env.default_params
    for name in ("max_steps_in_episode", "max_timesteps", "episode_length"):
        if isinstance(getattr(params, name, None), int):
            return getattr(params, name)
    return 1000


def resume_spec(args: argparse.Namespace, meta: dict):
    """The checkpoint's spec with a new total; any other differing option is an error."""
    from esrl.runs import run_spec
    from esrl.train import RunSpec

    saved = run_spec(meta, args.resume)  # an LLM run's checkpoint holds none
    for name, path in _SPEC_FIELDS.items():
        given, stored = getattr(args, name, None), _lookup(saved, path)
        if given is not None and given != stored:
            raise refused_on_resume(name, given, stored, args.resume)
    spec = RunSpec.from_dict(saved)
    done = meta.get("counters", {}).get("generation", 0)
    if args.generations is not None and args.generations < done:
        raise ValueError(
            f"--generations {args.generations} is fewer than the {done} generations "
            f"the run in {args.resume} has done; --generations is the total"
        )

    def given(value, stored):  # 0 is an option given (and checked), not a default
        return stored if value is None else value

    train = dataclasses.replace(
        spec.train,
        generations=given(args.generations, spec.train.generations),
        num_devices=given(args.devices, spec.train.num_devices),
        block=given(args.block, spec.train.block),
        progress=not args.no_progress,
        tensorboard=given(args.tensorboard, spec.train.tensorboard),
    )
    plugins = tuple(dict.fromkeys(spec.plugins + tuple(args.plugin)))
    return dataclasses.replace(spec, train=train, plugins=plugins)
