"""Builders of the benchmark's methods: each returns a compiled `esrl.bench.Bench`.

``plain`` and the ES methods share the environment (`esrl.bench.FixedHorizon`), the
policy (`esrl.policy.Policy`) and the rollout (`esrl.rollout.evaluate_population`); the
ES methods run the trainer's whole generation step. ``evosax_open_es`` is evosax 0.3's
``Open_ES`` with its ``GymnaxProblem`` on an MLP of the same shape (greedy actions, no
observation normalisation, same population and episode length).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from esrl.bench import Bench, Case, Skipped, aot, chunk_for, env_for
from esrl.policy import PolicySpec, make_policy
from esrl.rollout import RolloutConfig, evaluate_population
from esrl.train import block_size

PPO_UPDATE_STEPS = 32768
"""Environment steps per timed PPO update (num_steps = this / num_envs, at least 8)."""


def _spec(case: Case) -> PolicySpec:
    return PolicySpec(kind=case.kind, hidden=case.hidden, num_layers=case.num_layers)


def _rollout(case: Case) -> RolloutConfig:
    return RolloutConfig(horizon=case.horizon, chunk=chunk_for(case.horizon))


def build_plain(case: Case, key: jax.Array) -> Bench:
    """All members share one set of weights, no noise: the throughput ceiling."""
    env = env_for(case)
    env_params = env.default_params
    policy = make_policy(_spec(case), env.action_space(env_params))
    obs, _ = env.reset(key, env_params)
    params = jax.jit(policy.init)(key, policy.initial_carry(), obs)["params"]
    config = _rollout(case)
    # the same sequential blocks as the ES trainer's rollout (CPU), so that the
    # ceiling and the methods compared to it differ only in the noise
    block = block_size(case.population, None, jax.devices()[0].platform)

    def rollout(ids, key, params):
        return evaluate_population(
            key, env, env_params, policy, params, None, config, member_ids=ids
        ).returns

    def generation(key, params):
        ids = jnp.arange(case.population).reshape(-1, block)
        if ids.shape[0] == 1:
            return rollout(ids[0], key, params)
        return jax.lax.map(lambda b: rollout(b, key, params), ids).reshape(-1)

    compiled, seconds, mb = aot(generation, key, params)
    note = f"rolled out in blocks of {block}" if block < case.population else ""
    return Bench(
        "plain", None, lambda: compiled(key, params),
        case.population * case.horizon, case.population, seconds, mb, note,
        compiled,
    )  # fmt: skip


def build_es(case: Case, key: jax.Array, method: str, rank: int = 1) -> Bench | Skipped:
    """One training generation of EGGROLL (``rank``) or OpenAI-ES (full rank)."""
    from esrl.agents.eggroll import EggrollConfig
    from esrl.agents.openai_es import OpenAIESConfig
    from esrl.train import ESTrainer, TrainConfig

    note = ""
    if method == "eggroll":
        small = _smaller_than(case, key, rank)
        strategy = EggrollConfig(
            population=case.population, rank=rank, exclude=small
        ).strategy()
        if small:
            note = f"not perturbed (a dimension below rank {rank}): {', '.join(small)}"
    else:
        strategy = OpenAIESConfig(population=case.population).strategy()
    config = TrainConfig(rollout=_rollout(case), policy=_spec(case), progress=False)
    trainer = ESTrainer(env_for(case), strategy, config)
    state = trainer.init(key)
    if trainer.block < case.population:
        blocks = f"rolled out in blocks of {trainer.block}"
        note = f"{note}; {blocks}" if note else blocks
    if method == "openai_es":
        # every member of a block has its full-rank noise alive during the rollout
        size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.es.params))
        need, have = 2 * size * trainer.block, free_memory_bytes()
        if need > have / 2:
            return Skipped(
                "openai_es",
                f"needs ~{need / 2**30:.1f} GiB of full-rank noise, "
                f"{have / 2**30:.1f} GiB free",
            )
    compiled, seconds, mb = aot(trainer.generation, state)
    return Bench(
        method, rank if method == "eggroll" else None, lambda: compiled(state),
        case.population * case.horizon, case.population, seconds, mb, note,
        compiled,
    )  # fmt: skip


def _smaller_than(case: Case, key: jax.Array, rank: int) -> tuple[str, ...]:
    """Paths of the policy's matrices that cannot carry a rank-``rank`` perturbation."""
    from flax import traverse_util

    env = env_for(case)
    policy = make_policy(_spec(case), env.action_space(env.default_params))
    obs, _ = env.reset(key, env.default_params)
    shapes = jax.eval_shape(policy.init, key, policy.initial_carry(), obs)["params"]
    flat = traverse_util.flatten_dict(shapes)
    return tuple(
        "/".join(path)
        for path, leaf in sorted(flat.items())
        if len(leaf.shape) == 2 and min(leaf.shape) < rank
    )


def free_memory_bytes() -> int:
    """Memory this process may still use: device memory on a GPU, else host RAM."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def build_ppo(
    case: Case, key: jax.Array, num_envs: int | None = None
) -> Bench | Skipped:
    """PPO training (rollout and updates) with the same network; steps/s of training."""
    try:
        from esrl.agents import ppo
    except ImportError as err:  # pragma: no cover - the agent is optional here
        return Skipped("ppo", f"esrl.agents.ppo unavailable: {err}")
    if hasattr(ppo, "throughput_step"):
        return ppo.throughput_step(case, key, num_envs)
    num_envs = num_envs or case.population
    num_steps = max(8, PPO_UPDATE_STEPS // num_envs)
    # Craftax resets cost ~6 ms each: PPO auto-resets from a small pool of fresh states
    pool = 16 if case.env.startswith("craftax/") else None
    config = ppo.PPOConfig(
        num_envs=num_envs, num_steps=num_steps, policy=_spec(case),
        total_steps=num_envs * num_steps, reset_pool=pool,
    )  # fmt: skip
    agent = ppo.PPO(config, case.env)
    state = agent.init(key)

    def train(state):
        return agent.train(state, 1)[0].params

    compiled, seconds, mb = aot(train, state)
    note = (
        f"training: {num_envs} envs x {num_steps} steps per update, "
        f"{config.update_epochs} epochs x {config.num_minibatches} minibatches"
        + (f", reset pool {pool}" if pool else "")
    )
    return Bench(
        "ppo", None, lambda: compiled(state), config.batch_size, num_envs,
        seconds, mb, note,
    )  # fmt: skip


class _Flatten(nn.Module):
    """Apply ``inner`` to the flattened observation (our policies ravel theirs too)."""

    inner: nn.Module

    @nn.compact
    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        return self.inner(jnp.ravel(x), key)


def build_evosax(case: Case, key: jax.Array) -> Bench | Skipped:
    """evosax 0.3 Open_ES + GymnaxProblem, one generation (ask, evaluate, tell)."""
    if not case.env.startswith("gymnax/"):
        return Skipped(
            "evosax_open_es", "evosax's GymnaxProblem serves gymnax envs only"
        )
    if case.kind != "mlp":
        return Skipped(
            "evosax_open_es", "evosax's GymnaxProblem has no recurrent carry (MLP only)"
        )
    try:
        import optax
        from evosax.algorithms import Open_ES
        from evosax.problems import GymnaxProblem
        from evosax.problems.networks import MLP
    except ImportError as err:  # missing, or not the 0.3 API (evosax 0.2 has none)
        return Skipped(
            "evosax_open_es",
            f"evosax 0.3 not importable ({err}); pip install esrl[bench]",
        )
    env_name = case.env.removeprefix("gymnax/")
    num_actions = int(env_for(case).action_space().n)
    mlp = MLP(
        layer_sizes=(case.hidden,) * case.num_layers + (num_actions,),
        output_fn=lambda x, key=None: jnp.argmax(x, axis=-1),
    )
    network = _Flatten(mlp)  # image observations (MinAtar) enter flat, as ours do
    problem = GymnaxProblem(
        env_name, network, episode_length=case.horizon, use_normalize_obs=False
    )
    solution = problem.sample(key)
    es = Open_ES(case.population, solution, optimizer=optax.adam(0.01))
    es_state = es.init(key, solution, es.default_params)
    problem_state = problem.init(key)

    def generation(key, es_state, problem_state):
        k_ask, k_eval, k_tell = jax.random.split(key, 3)
        population, es_state = es.ask(k_ask, es_state, es.default_params)
        fitness, problem_state, _ = problem.eval(k_eval, population, problem_state)
        es_state, _ = es.tell(k_tell, population, -fitness, es_state, es.default_params)
        return es_state.mean

    compiled, seconds, mb = aot(generation, key, es_state, problem_state)
    return Bench(
        "evosax_open_es", None, lambda: compiled(key, es_state, problem_state),
        case.population * case.horizon, case.population, seconds, mb,
        "gymnax auto-reset every step (its own code path)",
    )  # fmt: skip
