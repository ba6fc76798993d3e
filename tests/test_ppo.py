"""PPO: GAE against a plain loop, truncation bootstrap, recurrent resets, learning, resume."""

from __future__ import annotations

import dataclasses
import json
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from esrl.agents.ppo import PPO, PPOConfig
from flax import struct

import esrl
from esrl import cli, spaces
from esrl.checkpoint import load_checkpoint, read_meta
from esrl.cli_ppo import build_parser, resume_spec, spec_from_args
from esrl.env import Environment
from esrl.gae import gae
from esrl.logger import RunLogger, read_metrics
from esrl.policy import PolicySpec
from esrl.train_ppo import PPORunSpec, _compiled, prepare, run_chunk, train_ppo

sys.path.insert(0, str(Path(__file__).parent))
from interrupts import SignalledInDel, ctrl_c_at_record
from memory_env import MemoryEnv

GRU = PolicySpec(kind="gru", hidden=32)


def gae_loop(rewards, values, next_values, terminated, truncated, gamma, lam):
    """The textbook recursion, one environment and one step at a time."""
    steps, envs = rewards.shape
    advantages = np.zeros((steps, envs))
    for n in range(envs):
        next_advantage = 0.0
        for t in reversed(range(steps)):
            bootstrap = 0.0 if terminated[t, n] else gamma * next_values[t, n]
            delta = rewards[t, n] + bootstrap - values[t, n]
            ended = terminated[t, n] or truncated[t, n]
            next_advantage = delta + (0.0 if ended else gamma * lam * next_advantage)
            advantages[t, n] = next_advantage
    return advantages, advantages + values


def test_gae_scan_equals_python_loop_with_terminals_and_truncations():
    rng = np.random.default_rng(0)
    shape = (64, 5)
    rewards, values, next_values = (rng.normal(size=shape) for _ in range(3))
    terminated = rng.random(shape) < 0.1
    truncated = (rng.random(shape) < 0.1) & ~terminated
    assert terminated.any() and truncated.any()
    args = (rewards, values, next_values, terminated, truncated, 0.97, 0.9)
    adv, target = gae(
        *(jnp.asarray(a, jnp.float32) for a in args[:3]),
        jnp.asarray(terminated),
        jnp.asarray(truncated),
        0.97,
        0.9,
    )
    ref_adv, ref_target = gae_loop(*args)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(target, ref_target, rtol=1e-5, atol=1e-5)
    # A truncated last step bootstraps from V(final obs); a terminated one does not.
    one = lambda term, trunc: gae(
        jnp.ones((1, 1)),
        jnp.zeros((1, 1)),
        jnp.full((1, 1), 10.0),
        jnp.array([[term]]),
        jnp.array([[trunc]]),
        0.9,
        0.5,
    )[0][0, 0]
    assert float(one(False, True)) == pytest.approx(1.0 + 0.9 * 10.0)
    assert float(one(True, False)) == pytest.approx(1.0)


def rollout_and_batch(ppo, state):
    runner, traj = ppo.rollout(state, jax.random.key(1))
    return traj, ppo._batch(state, traj, runner)[0]


def test_truncation_bootstraps_from_the_final_observation():
    """With lambda = 0, A_t = r + gamma * V(final obs) - V(obs) at a time-limit cut."""
    cfg = PPOConfig(
        total_steps=256, num_envs=4, num_steps=64, gae_lambda=0.0, num_minibatches=1
    )
    env = esrl.make("gymnax/CartPole-v1")
    ppo = PPO(cfg, env, env.default_params.replace(max_steps_in_episode=5))
    state = jax.jit(ppo.init)(jax.random.key(0))
    traj, batch = jax.jit(rollout_and_batch, static_argnums=0)(ppo, state)
    cut = np.asarray(traj.truncated & ~traj.terminated)
    assert cut.sum() > 10
    _, final = ppo.act(state.params, (), traj.final_obs[cut])
    _, reset = ppo.act(state.params, (), traj.obs[1:][cut[:-1]])
    expected = traj.reward[cut] + cfg.gamma * final.value - traj.value[cut]
    np.testing.assert_allclose(batch.advantage[cut], expected, rtol=1e-5, atol=1e-5)
    # ... and not from the freshly reset observation the environment moved on to.
    assert not np.allclose(final.value[: len(reset.value)], reset.value, atol=1e-4)


def replay(ppo, state, traj, reset_after_done: bool):
    """Act step by step in Python; reset after (or, wrongly, before) a done step."""
    carry, values = np.asarray(state.carry), []
    done = np.asarray(traj.terminated | traj.truncated)
    act = jax.jit(ppo.act)
    for t in range(done.shape[0]):
        if not reset_after_done:  # the frequent bug: the current step's done
            carry = np.where(done[t][:, None], 0.0, carry)
        carry, out = act(state.params, carry, traj.obs[t])
        values.append(out.value)
        if reset_after_done:
            carry = np.where(done[t][:, None], 0.0, carry)
    return np.stack(values)


def test_recurrent_carry_resets_where_and_only_where_an_episode_ended():
    cfg = PPOConfig(
        total_steps=64, num_envs=4, num_steps=8, num_minibatches=2, policy=GRU
    )
    ppo = PPO(cfg, MemoryEnv(delay=2))  # episodes of 3 steps: they end mid-rollout
    state = jax.jit(ppo.init)(jax.random.key(0))
    state = state.replace(carry=jax.random.normal(jax.random.key(3), state.carry.shape))
    runner, traj = jax.jit(ppo.rollout)(state, jax.random.key(1))
    done = np.asarray(traj.terminated | traj.truncated)
    assert done[:-1].any() and not done.all()
    values = replay(ppo, state, traj, reset_after_done=True)
    np.testing.assert_allclose(traj.value, values, rtol=1e-5, atol=1e-6)
    wrong = replay(ppo, state, traj, reset_after_done=False)
    assert not np.allclose(traj.value, wrong, atol=1e-4)
    # The carry handed to the next rollout is zero exactly where the last step ended.
    zero = np.all(np.asarray(runner.carry) == 0.0, axis=-1)
    np.testing.assert_array_equal(zero, done[-1])
    # Training replays the sequence with the same resets: same values and log-probs.
    out = jax.jit(ppo.unroll)(state.params, state.carry, traj.obs, done)
    np.testing.assert_allclose(out.value, traj.value, rtol=1e-5, atol=1e-6)


@struct.dataclass
class BanditState:
    target: jax.Array


class ContinuousBandit(Environment):
    """One-step task: observe x in [-1, 1]^2, reward -|a - x|^2, actions in [-1, 1]^2."""

    def reset(self, key, params=None):
        x = jax.random.uniform(key, (2,), minval=-1.0, maxval=1.0)
        return x, BanditState(x)

    def step(self, key, state, action, params=None):
        clipped = jnp.all(jnp.abs(action) <= 1.0)  # PPO must clip into the Box
        reward = jnp.where(clipped, -jnp.sum((action - state.target) ** 2), -100.0)
        obs, state = self.reset(key)
        return obs, state, reward, jnp.array(True), jnp.array(False), {}

    def observation_space(self, params=None):
        return spaces.Box(-1.0, 1.0, (2,), jnp.float32)

    def action_space(self, params=None):
        return spaces.Box(-1.0, 1.0, (2,), jnp.float32)


def test_gaussian_policy_learns_a_continuous_bandit_with_normalisation():
    cfg = PPOConfig(
        total_steps=16 * 16 * 40,
        num_envs=16,
        num_steps=16,
        lr=3e-3,
        normalize_obs=True,
        normalize_reward=True,
        policy=PolicySpec(hidden=32),
    )
    ppo = PPO(cfg, ContinuousBandit())
    start = jax.jit(ppo.init)(jax.random.key(0))
    state, metrics = jax.jit(partial(ppo.train, num_updates=cfg.num_updates))(start)
    score = jax.jit(
        jax.vmap(partial(ppo.evaluate, episodes=256, horizon=1), in_axes=(None, 0))
    )
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), start, state)
    before, after = np.asarray(score(jax.random.key(1), both))
    train = np.asarray(metrics.return_sum / metrics.episodes)
    assert train.min() > -50.0  # never an unclipped action
    assert before < -0.5 and after > -0.05, (before, after)
    # Statistics: the first reset, then every rollout's observations.
    assert float(state.obs_stats.count) == 16 + cfg.num_updates * cfg.batch_size


@pytest.fixture(scope="module")
def cartpole():
    """PPO with the default (rejax) settings on CartPole and its jitted chunk runner."""
    ppo = PPO(PPOConfig(total_steps=250_000), "gymnax/CartPole-v1")
    return ppo, jax.jit(partial(run_chunk, ppo, ppo.config.num_updates))


def test_ppo_solves_cartpole(cartpole):
    ppo, chunk = cartpole
    state = jax.jit(ppo.init)(jax.random.key(0))
    state, _ = chunk(state, ppo.config.num_updates)
    assert int(state.update) == ppo.config.num_updates == 122
    assert float(ppo.evaluate(jax.random.key(1), state)) >= 475.0


@pytest.mark.slow
def test_vmap_over_seeds_matches_separate_runs(cartpole):
    ppo, chunk = cartpole
    keys = jax.random.split(jax.random.key(0), 2)
    states, metrics = jax.jit(jax.vmap(chunk, in_axes=(0, None)))(
        jax.vmap(ppo.init)(keys), 2
    )
    for i, key in enumerate(keys):
        state, m = chunk(jax.jit(ppo.init)(key), 2)
        np.testing.assert_allclose(metrics.return_sum[i], m.return_sum, rtol=1e-5)
        mine = jax.tree.map(lambda x, i=i: x[i], states.params)
        close = partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5)
        jax.tree.map(close, mine, state.params)
    assert not np.allclose(metrics.return_sum[0], metrics.return_sum[1])


MEMORY = PPORunSpec(
    env="test/Memory-v0",  # registered by importing tests/memory_env.py
    ppo=PPOConfig(total_steps=25 * 640, num_envs=32, num_steps=20, lr=3e-3,
                  normalize_obs=True, normalize_reward=True, policy=GRU),
    eval_every=5, eval_episodes=256, eval_horizon=5, progress=False,
)  # fmt: skip


def test_gru_solves_the_memory_task():
    """A memoryless policy scores 0.5 on average (two cues); the GRU must recall."""
    result = train_ppo(MEMORY)
    assert result.summary["final_eval_return"] >= 0.95


TRAINING = ("iteration", "env_steps", "train_return_mean", "value_loss", "approx_kl")


def test_resume_through_the_cli_equals_uninterrupted(tmp_path, capsys):
    """GRU carry, obs/reward statistics and keys all travel through the checkpoint."""
    whole = train_ppo(dataclasses.replace(MEMORY, ppo=steps(7)), tmp_path / "whole")
    split = str(tmp_path / "split")
    argv = [
        "train", "--agent", "ppo", "--env", "test/Memory-v0", "--plugin", "memory_env",
        "--policy", "gru", "--hidden", "32", "--num-envs", "32", "--num-steps", "20",
        "--lr", "3e-3", "--normalize-obs", "--normalize-reward", "--eval-every", "5",
        "--eval-episodes", "256", "--horizon", "5", "--no-progress", "--out", split,
    ]  # fmt: skip
    assert cli.main([*argv, "--total-steps", str(3 * 640)]) == 0  # stops mid-chunk
    assert cli.main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    resume = ["train", "--resume", split, "--no-progress"]
    assert cli.main([*resume, "--lr", "1e-3"]) == 2
    assert "--lr 0.001 differs from the run in" in capsys.readouterr().err
    assert cli.main([*resume, "--no-normalize-obs", "--reset-pool", "4"]) == 2
    assert "--no-normalize-obs differs from the run in" in capsys.readouterr().err
    assert cli.main([*resume, "--reset-pool", "4"]) == 2
    assert f"{split} (no --reset-pool)" in capsys.readouterr().err
    assert cli.main([*resume, "--total-steps", str(7 * 640)]) == 0  # 3 -> 5 -> 7
    before = json.loads((tmp_path / "split" / "summary.json").read_text())
    _compiled.cache_clear()  # as in a new process
    assert cli.main(resume) == 0  # finished: nothing to compile, nothing to add
    after = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert after["compile_s"] == before["compile_s"]
    state, meta = load_checkpoint(split, template=whole.state)
    jax.tree.map(np.testing.assert_array_equal, whole.state, state)
    lines = [
        [{k: r.get(k) for k in TRAINING} for r in read_metrics(tmp_path / d)]
        for d in ("whole", "split")
    ]
    assert len(lines[0]) == 7 and lines[0] == lines[1]
    assert meta["counters"]["env_steps"] == whole.summary["env_steps"] == 7 * 640
    # in Python too, a total below what is done is refused (it rewrote the summary)
    spec = PPORunSpec.from_dict(meta["spec"])
    short = dataclasses.replace(
        spec, ppo=dataclasses.replace(spec.ppo, total_steps=640)
    )
    with pytest.raises(ValueError, match="total_steps 640 is fewer than the 4480 env"):
        prepare(short, split, resume=True)


def test_an_interrupt_among_a_chunks_records_keeps_metrics_at_the_checkpoint(
    tmp_path, monkeypatch
):
    """PPO logs a chunk's updates one by one before keeping the chunk's state."""
    ctrl_c_at_record(monkeypatch, 4, written=True)
    out = tmp_path / "run"
    argv = [
        "train", "--agent", "ppo", "--env", "gymnax/CartPole-v1", "--hidden", "8",
        "--num-envs", "4", "--num-steps", "8", "--total-steps", str(6 * 32),
        "--eval-every", "3", "--eval-episodes", "2", "--horizon", "20",
        "--no-progress", "--out", str(out),
    ]  # fmt: skip
    assert cli.main(argv) == 130
    done = read_meta(out)["counters"]["update"]
    assert done == 3  # the first chunk (updates 1-3) was kept, the second was not
    assert [r["iteration"] for r in read_metrics(out)] == [1, 2, 3]


TINY = [
    "train", "--agent", "ppo", "--env", "gymnax/CartPole-v1", "--hidden", "8",
    "--num-envs", "4", "--num-steps", "8", "--eval-every", "3", "--eval-episodes", "2",
    "--horizon", "20", "--no-progress",
]  # fmt: skip


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def test_an_interrupt_while_compiling_or_finishing_says_what_to_do(
    tmp_path, monkeypatch, capsys
):
    """Ctrl-C there ended the run with exit 130 and no word (and no curve.png)."""
    out, command = tmp_path / "run", f"esrl train --resume {tmp_path / 'run'}"
    monkeypatch.setattr("esrl.logger.plot_curve", _ctrl_c)
    assert cli.main([*TINY, "--total-steps", str(3 * 32), "--out", str(out)]) == 130
    assert capsys.readouterr().err == (
        f"interrupted after update 3; checkpoint saved, continue with: {command}\n"
    )
    monkeypatch.setattr("esrl.xla.aot", _ctrl_c)
    _compiled.cache_clear()  # as in a new process
    resume = ["train", "--resume", str(out), "--no-progress"]
    assert cli.main([*resume, "--total-steps", str(6 * 32)]) == 130
    assert capsys.readouterr().err == (
        f"interrupted before training started; nothing was written, continue with: "
        f"{command} --total-steps {6 * 32}\n"  # was without: the 3 updates done
    )
    assert read_meta(out)["counters"]["update"] == 3
    monkeypatch.undo()
    assert cli.main(resume) == 0  # the final outputs of the 3 updates
    assert (out / "curve.png").is_file()
    assert [r["iteration"] for r in read_metrics(out)] == [1, 2, 3]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_whose_interrupt_python_dropped_still_stops_the_run(
    tmp_path, monkeypatch, capsys
):
    """It was lost: the run went on to its last update."""
    log = RunLogger.log

    def log_then_collect(self, record):
        log(self, record)
        if record["iteration"] == 2:
            SignalledInDel()  # made and dropped: its __del__ runs here

    monkeypatch.setattr(RunLogger, "log", log_then_collect)
    out = tmp_path / "run"
    assert cli.main([*TINY, "--total-steps", str(6 * 32), "--out", str(out)]) == 130
    assert capsys.readouterr().err.endswith(
        f"interrupted after update 3; checkpoint saved, continue with: "
        f"esrl train --resume {out}\n"
    )
    assert read_meta(out)["counters"]["update"] == 3
    assert [r["iteration"] for r in read_metrics(out)] == [1, 2, 3]


def test_a_resume_may_add_a_plugin_but_not_change_a_setting():
    saved = dataclasses.replace(MEMORY, plugins=("memory_env",))
    args = build_parser().parse_args(["--resume", "DIR", "--plugin", "json"])
    spec = resume_spec(args, {"spec": saved.to_dict()})
    assert spec.plugins == ("memory_env", "json")
    spec.check_resumable(saved)
    with pytest.raises(ValueError, match=r"\(seed differ\)"):
        dataclasses.replace(spec, seed=1).check_resumable(saved)
    other = dataclasses.replace(spec.ppo, lr=1e-4, policy=PolicySpec(hidden=8))
    names = r"\(ppo.lr, ppo.policy.kind, ppo.policy.hidden differ\)"  # not "ppo"
    with pytest.raises(ValueError, match=names):
        dataclasses.replace(spec, ppo=other).check_resumable(saved)


def test_a_resume_keeps_tensorboard_unless_told_otherwise():
    """The printed command (esrl train --resume DIR) once stopped TensorBoard logging."""
    saved = {"spec": dataclasses.replace(MEMORY, tensorboard=True).to_dict()}
    for argv, expected in (([], True), (["--no-tensorboard"], False)):
        args = build_parser().parse_args(["--resume", "DIR", *argv])
        assert resume_spec(args, saved).tensorboard is expected
    args = build_parser().parse_args(["--resume", "DIR", "--tensorboard"])
    assert resume_spec(args, {"spec": MEMORY.to_dict()}).tensorboard is True
    args = build_parser().parse_args(["--env", "gymnax/CartPole-v1"])
    assert spec_from_args(args).tensorboard is False


def test_a_resume_cannot_shorten_the_run_or_switch_to_ppo():
    meta = {"spec": MEMORY.to_dict(), "counters": {"env_steps": 3 * 640}}
    args = build_parser().parse_args(["--resume", "DIR", "--total-steps", "1000"])
    with pytest.raises(ValueError, match="fewer than the 1920 env steps"):
        resume_spec(args, meta)  # was ignored: the run stayed at 3 updates
    args = build_parser().parse_args(["--resume", "DIR", "--total-steps", "1920"])
    assert resume_spec(args, meta).ppo.total_steps == 1920
    es_run = {"spec": {"agent": "eggroll", "env": "gymnax/CartPole-v1"}}
    with pytest.raises(ValueError, match=r"--agent ppo differs .* \(eggroll\)"):
        resume_spec(args, es_run)  # was "esrl train: error: ppo" (a KeyError)


class NaNRewardMemoryEnv(MemoryEnv):
    """Every reward is NaN (a diverging simulator)."""

    def step(self, key, state, action, params=None):
        obs, state, reward, term, trunc, info = super().step(key, state, action, params)
        # not reward * nan: jitted, XLA makes float(bool) * nan a select that gives 0
        # (not NaN) where the reward is 0
        return obs, state, jnp.full_like(reward, jnp.nan), term, trunc, info


def test_a_nan_evaluation_is_logged_and_checkpointed_not_a_crash(tmp_path):
    spec = PPORunSpec(
        env="test/Memory-v0",
        ppo=PPOConfig(total_steps=2 * 64, num_envs=4, num_steps=16,
                      num_minibatches=2, policy=PolicySpec(hidden=8)),
        eval_every=1, eval_episodes=4, eval_horizon=5, progress=False,
    )  # fmt: skip
    result = train_ppo(spec, tmp_path, env=NaNRewardMemoryEnv(delay=2))
    assert result.summary["final_eval_return"] is None
    assert [r["eval_return"] for r in read_metrics(tmp_path)] == [None, None]
    _, meta = load_checkpoint(tmp_path, template=result.state)
    assert meta["counters"]["update"] == 2 and meta["counters"]["eval_return"] is None


def steps(updates: int) -> PPOConfig:
    return dataclasses.replace(MEMORY.ppo, total_steps=updates * 640)


def test_bad_configurations_say_what_to_do():
    with pytest.raises(ValueError, match="num_minibatches=3 must divide num_envs"):
        PPOConfig(num_envs=16, num_minibatches=3, policy=GRU)
    with pytest.raises(ValueError, match="num_minibatches must be >= 1, got 0"):
        PPOConfig(num_minibatches=0)  # not "0 must divide 2048"
    with pytest.raises(ValueError, match="raise total_steps"):
        PPOConfig(total_steps=100)
    with pytest.raises(ValueError, match="lr must be > 0, got -0.001"):
        PPOConfig(lr=-1e-3)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got 1.5"):
        PPOConfig(gamma=1.5)
    with pytest.raises(ValueError, match="ent_coef must be >= 0, got -0.1"):
        PPOConfig(ent_coef=-0.1)
    with pytest.raises(ValueError, match="hidden width must be >= 1, got 0"):
        PPOConfig(policy=PolicySpec(hidden=0))
    for name in ("lr", "vf_coef", "ent_coef"):  # trained on with NaN parameters
        with pytest.raises(ValueError, match=f"{name} must be finite, got inf"):
            PPOConfig(**{name: float("inf")})
    PPOConfig(max_grad_norm=float("inf"), clip_eps=float("inf"))  # inf: no clipping
    with pytest.raises(ValueError, match=r"reset_pool must be in \[1, num_envs\]"):
        PPOConfig(num_envs=16, reset_pool=17)  # checked when built, not by PPO
    with pytest.raises(TypeError, match="without autoreset"):
        PPO(PPOConfig(), esrl.make("gymnax/CartPole-v1", autoreset=True))


def test_values_of_the_wrong_type_are_refused_when_the_config_is_built():
    # were accepted: a float count failed inside jit ("Shapes must be 1D sequences of
    # concrete values of integer type") or ran with float counters, a string flag
    # ("no") was truthy, a PolicySpec typo hit the minibatch rule as a recurrent one
    with pytest.raises(TypeError, match=r"total_steps must be an int, got 1000000.0; "
                       "write 1000000"):  # fmt: skip
        PPOConfig(total_steps=1e6)
    for name in ("num_envs", "num_steps", "update_epochs", "num_minibatches"):
        with pytest.raises(TypeError, match=f"^{name} must be an int, got 2.5$"):
            PPOConfig(**{name: 2.5})
    with pytest.raises(TypeError, match="num_envs must be an int, got True"):
        PPOConfig(num_envs=True, num_steps=2048, num_minibatches=1)
    with pytest.raises(ValueError, match=r"must be in \[1, num_envs\], got 2.5"):
        PPOConfig(reset_pool=2.5)
    with pytest.raises(TypeError, match="^lr must be a number, got '3e-4'$"):
        PPOConfig(lr="3e-4")
    schedule = optax.linear_schedule(1e-3, 0.0, 100)
    with pytest.raises(TypeError, match="anneal_lr=True decays it"):
        PPOConfig(lr=schedule)
    with pytest.raises(TypeError, match="anneal_lr must be True or False, got 'no'"):
        PPOConfig(anneal_lr="no")
    with pytest.raises(TypeError, match="policy must be a PolicySpec, got 'gru'"):
        PPOConfig(policy="gru")
    with pytest.raises(ValueError, match="unknown policy 'GRU'; choose one of mlp"):
        PPOConfig(num_envs=16, num_minibatches=32, policy=PolicySpec(kind="GRU"))
    with pytest.raises(ValueError, match="unknown activation 'elu'"):
        PPOConfig(policy=PolicySpec(activation="elu"))
    with pytest.raises(TypeError, match="hidden must be an int, got 8.0"):
        PolicySpec(hidden=8.0)
    with pytest.raises(ValueError, match="minibatches are whole environments"):
        PPOConfig(num_envs=4, num_minibatches=8, policy=GRU)
    numpy = PPOConfig(num_envs=np.int64(16), lr=np.float32(1e-3), anneal_lr=np.True_)
    assert numpy.num_updates == 244


@dataclasses.dataclass
class PlainDataclassBandit(ContinuousBandit):
    """A user's environment with a field: a plain @dataclass is unhashable."""

    scale: float = 1.0


def test_an_unhashable_environment_is_refused_with_what_to_do(tmp_path):
    # was: "unhashable type" from the agent cache, or from jit's static arguments
    # once compiling (a traceback after prepare had passed)
    tiny = PPOConfig(total_steps=8, num_envs=2, num_steps=4, num_minibatches=1)
    spec = PPORunSpec(env="my/Bandit-v0", ppo=tiny, progress=False)
    message = r"must be hashable .* @dataclass\(frozen=True\)"
    with pytest.raises(TypeError, match=message):
        prepare(spec, tmp_path, env=PlainDataclassBandit())
    with pytest.raises(TypeError, match=message):
        PPO(tiny, PlainDataclassBandit())
    frozen = dataclasses.dataclass(frozen=True)(
        type("Frozen", (ContinuousBandit,), {"__annotations__": {"scale": float}})
    )
    PPO(tiny, frozen(scale=1.0))


def test_autoreset_under_another_wrapper_is_rejected():
    class Scaled(esrl.Wrapper):
        pass

    inner = esrl.make("gymnax/CartPole-v1", autoreset=True)
    with pytest.raises(TypeError, match="without autoreset"):
        PPO(PPOConfig(), Scaled(inner))
    PPO(PPOConfig(), Scaled(esrl.make("gymnax/CartPole-v1")))  # no AutoReset: fine


def test_reset_pool_option(capsys, tmp_path):
    argv = ["--env", "gymnax/CartPole-v1", "--reset-pool", "4", "--no-progress"]
    assert spec_from_args(build_parser().parse_args(argv)).ppo.reset_pool == 4
    bad = ["train", "--agent", "ppo", "--env", "gymnax/CartPole-v1", "--reset-pool",
           "0", "--no-progress", "--out", str(tmp_path / "r")]  # fmt: skip
    assert cli.main(bad) == 2
    assert "reset_pool must be in [1, num_envs], got 0" in capsys.readouterr().err
    # named as the option is (was "eval_horizon must be >= 1")
    horizon = ["--env", "gymnax/CartPole-v1", "--horizon", "0"]
    with pytest.raises(ValueError, match="^horizon must be >= 1, got 0$"):
        spec_from_args(build_parser().parse_args(horizon))


def test_nan_rewards_are_dropped_and_reported_once(tmp_path, capsys):
    """Every reward NaN: every transition is left out, the parameters stay finite and
    the run says so once (it warned that the parameters were NaN from then on)."""
    spec = PPORunSpec(
        env="test/Memory-v0",
        ppo=PPOConfig(total_steps=3 * 64, num_envs=4, num_steps=16,
                      num_minibatches=2, policy=PolicySpec(hidden=8)),
        eval_every=1, eval_episodes=4, eval_horizon=5,
    )  # fmt: skip
    result = train_ppo(spec, tmp_path, env=NaNRewardMemoryEnv(delay=2))
    err = capsys.readouterr().err
    assert err.count("non-finite reward, observation or value") == 1
    assert "update 1: 64 transitions" in err and "NaN/inf" not in err
    assert "lower --lr" not in err  # only said when gradient steps were skipped
    records = read_metrics(tmp_path)
    assert [r["dropped_transitions"] for r in records] == [64] * 3
    assert [r["value_loss"] for r in records] == [0.0] * 3  # no valid step: 0, not NaN
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(result.state.params))


def test_the_warning_names_skipped_steps_and_suggests_a_lower_lr():
    from esrl.train_ppo import _nonfinite_warning

    clean = {"iteration": 1, "dropped_transitions": 0, "skipped_steps": 0}
    assert _nonfinite_warning([clean]) is None
    msg = _nonfinite_warning([clean, {**clean, "iteration": 2, "skipped_steps": 3}])
    assert msg.startswith("update 2: 3 gradient steps") and "lower --lr" in msg


def test_ppo_trains_under_x64():
    # was: lax.cond in the value bootstrap failed, its zero branch float32 against the
    # critic's float64
    with jax.enable_x64(True):
        config = PPOConfig(num_envs=4, num_steps=8, num_minibatches=2, total_steps=64)
        ppo = PPO(config, "gymnax/CartPole-v1")
        state, _ = ppo.train(ppo.init(jax.random.PRNGKey(0)), 2)
        assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float64")}


def test_ppo_trains_under_x64_on_float64_rewards():
    # was: "scan body function carry input and carry output must have equal types"
    # (episode returns summed in float32, the bandit's reward float64 under x64)
    with jax.enable_x64(True):
        config = PPOConfig(
            num_envs=4, num_steps=8, num_minibatches=2, total_steps=64,
            normalize_reward=True,
        )  # fmt: skip
        ppo = PPO(config, ContinuousBandit())
        state, metrics = ppo.train(ppo.init(jax.random.PRNGKey(0)), 2)
        assert state.episode_return.dtype == state.disc_return.dtype == jnp.float64
        assert np.isfinite(metrics.return_sum).all()


def test_train_ppo_runs_gymnax_pendulum_under_x64(tmp_path):
    # was: the second chunk's call failed ("Argument 'state.env_state.last_u' compiled
    # with float64[8] and called with float32[8]"): Pendulum's reset stores a float64
    # last_u, its step the float32 action
    with jax.enable_x64(True):
        spec = PPORunSpec(
            env="gymnax/Pendulum-v1", ppo=PPOConfig(num_envs=4, num_steps=8,
            total_steps=64), eval_every=1, eval_episodes=2, eval_horizon=20,
            progress=False,
        )  # fmt: skip
        summary = train_ppo(spec, tmp_path / "run").summary
        assert summary["updates"] == 2 and np.isfinite(summary["final_eval_return"])


def test_a_custom_optimizer_replaces_the_default():
    # was: no way to use an optax schedule or another optimizer with PPO
    config = PPOConfig(num_envs=4, num_steps=8, num_minibatches=2, total_steps=64)
    frozen = PPO(config, "gymnax/CartPole-v1", optimizer=optax.sgd(0.0))
    start = frozen.init(jax.random.PRNGKey(0))
    state, _ = frozen.train(start, 2)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, state.params, start.params))
    adam = PPO(config, "gymnax/CartPole-v1")
    state, _ = adam.train(adam.init(jax.random.PRNGKey(0)), 2)  # the same start
    assert not jax.tree.all(jax.tree.map(jnp.array_equal, state.params, start.params))


class DictObs(Environment):
    """An environment whose observation is a dict (policies take one array)."""

    def reset(self, key, params=None):
        return {"a": jnp.zeros(2), "b": jnp.zeros(1)}, jnp.zeros(())

    def step(self, key, state, action, params=None):
        obs, state = self.reset(key)
        return obs, state, 0.0, jnp.array(False), jnp.array(False), {}

    def observation_space(self, params=None):
        box = spaces.Box(-1.0, 1.0, (2,), jnp.float32)
        return spaces.Dict({"a": box, "b": spaces.Box(-1.0, 1.0, (1,), jnp.float32)})

    def action_space(self, params=None):
        return spaces.Discrete(2)


def test_a_dict_observation_gets_the_policy_message_not_a_key_error():
    # was: KeyError: 0 (PPO.init indexed the dict observation's first member)
    config = PPOConfig(num_envs=2, num_steps=4, total_steps=8, num_minibatches=1)
    with pytest.raises(TypeError, match="policies take one array observation, got a "
                       r"dict with keys \['a', 'b'\]; flatten it"):  # fmt: skip
        PPO(config, DictObs()).init(jax.random.key(0))


def test_a_dict_observation_is_an_error_line_not_a_traceback(tmp_path, capsys):
    # was: prepare passed, fit raised the TypeError while compiling: a traceback
    # from `esrl train` (exit 1) instead of its "error:" line (exit 2)
    tiny = PPOConfig(total_steps=8, num_envs=2, num_steps=4, num_minibatches=1)
    spec = PPORunSpec(env="test/DictObs-v0", ppo=tiny, progress=False)
    with pytest.raises(TypeError, match="policies take one array observation"):
        prepare(spec, tmp_path / "py", env=DictObs())
    if "test/DictObs-v0" not in esrl.list_envs():
        esrl.register("test/DictObs-v0", DictObs)
    argv = [
        "train", "--agent", "ppo", "--env", "test/DictObs-v0", "--num-envs", "2",
        "--num-steps", "4", "--num-minibatches", "1", "--total-steps", "8",
        "--no-progress", "--out", str(tmp_path / "cli"),
    ]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("esrl train: error: policies take one array observation")


def test_an_environment_object_as_the_spec_env_is_refused_at_once():
    # was: accepted; the run compiled and trained its first chunk, then crashed
    # writing the checkpoint ("Object of type GymnaxEnv is not JSON serializable")
    tiny = PPOConfig(total_steps=8, num_envs=2, num_steps=4, num_minibatches=1)
    with pytest.raises(TypeError, match=r"train_ppo\(spec, DIR, env=\.\.\.\)"):
        PPORunSpec(env=esrl.make("gymnax/CartPole-v1"), ppo=tiny)
