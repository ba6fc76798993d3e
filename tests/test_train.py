"""The ES trainer learns, resumes exactly, survives Ctrl-C and NaN members."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from esrl.agents.eggroll import EggrollConfig
from interrupts import SignalledInDel, ctrl_c_at_record, tensorboard_steps
from memory_env import MemoryEnv

import esrl
from esrl.checkpoint import checkpoint_path, read_meta
from esrl.cli import main
from esrl.evaluate import evaluate_run
from esrl.logger import RunDirBusy, RunLogger, read_metrics
from esrl.policy import PolicySpec
from esrl.rollout import RolloutConfig
from esrl.runs import check_run_dir
from esrl.train import (
    Counters,
    ESTrainer,
    RunSpec,
    TrainConfig,
    _record,
    block_size,
    fit,
    prepare,
    train,
)
from esrl.train_ppo import PPORunSpec

CARTPOLE = ["train", "--env", "gymnax/CartPole-v1", "--no-progress"]
TIMING = ("wall_time_s", "env_steps_per_s")


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _tensors(directory) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(checkpoint_path(directory)))


def test_eggroll_defaults_solve_cartpole(tmp_path):
    assert main([*CARTPOLE, "--out", str(tmp_path)]) == 0
    records = read_metrics(tmp_path)
    assert records[-1]["eval_return"] >= 475
    for key in ("iteration", "env_steps", "wall_time_s", "train_return_mean"):
        assert key in records[0]
    summary = read_meta(tmp_path)["counters"]
    assert summary["eval_return"] == records[-1]["eval_return"]
    for name in ("summary.json", "curve.png", "checkpoint.safetensors"):
        assert (tmp_path / name).is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    # the policy kind, as PPO's summary has it (it was missing)
    assert (summary["agent"], summary["policy"]) == ("eggroll", "mlp")


def test_openai_es_improves_on_cartpole(tmp_path):
    args = ["--agent", "openai_es", "--generations", "8", "--population", "128"]
    assert main([*CARTPOLE, *args, "--eval-every", "4", "--out", str(tmp_path)]) == 0
    records = read_metrics(tmp_path)
    first = records[0]["train_return_mean"]
    assert records[-1]["eval_return"] >= max(150.0, 4 * first)
    assert records[-1]["train_return_mean"] > 3 * first


def _memory_run(kind: str) -> float:
    spec = RunSpec(
        env="test/Memory-v0",
        agent_config=EggrollConfig(population=128, sigma=0.2, lr=0.1),
        train=TrainConfig(
            generations=20, eval_every=20, eval_episodes=64, progress=False,
            rollout=RolloutConfig(horizon=8, episodes=16),
            policy=PolicySpec(kind=kind, hidden=16),
        ),
    )  # fmt: skip
    return train(spec, env=MemoryEnv(delay=4)).summary["final_eval_return"]


def test_memory_task_needs_recurrence():
    assert _memory_run("gru") >= 0.95
    assert _memory_run("mlp") <= 0.75  # a memoryless policy guesses: ~0.5


SMALL = [
    *CARTPOLE, "--population", "16", "--hidden", "8", "--horizon", "50",
    "--eval-every", "3", "--eval-episodes", "4", "--checkpoint-every", "2",
    "--normalize-obs",
]  # fmt: skip


def test_resume_equals_uninterrupted(tmp_path, monkeypatch, capsys):
    full, split = tmp_path / "full", tmp_path / "split"
    assert main([*SMALL, "--generations", "6", "--out", str(full)]) == 0
    final = json.loads((full / "summary.json").read_text())["final_eval_return"]
    # was the float's repr (e.g. 581.1372680664062)
    assert f"eval return {final:.2f}, " in capsys.readouterr().out
    assert main([*SMALL, "--generations", "3", "--out", str(split)]) == 0
    assert read_meta(split)["counters"]["generation"] == 3

    log = ctrl_c_at_record(monkeypatch, 5, written=False)
    resume = ["train", "--resume", str(split), "--no-progress"]
    assert main([*resume, "--generations", "6"]) == 130
    assert read_meta(split)["counters"]["generation"] == 4  # saved on Ctrl-C
    assert [r["iteration"] for r in read_metrics(split)] == [1, 2, 3, 4]
    # was generation 3's, beside a checkpoint and metrics at 4
    assert not (split / "summary.json").exists() and not (split / "curve.png").exists()
    monkeypatch.setattr(RunLogger, "log", log)
    assert main(resume) == 0  # the total (6) was stored with the checkpoint
    before = json.loads((split / "summary.json").read_text())
    assert main(resume) == 0  # finished: nothing to compile, nothing to add
    after = json.loads((split / "summary.json").read_text())
    assert after["compile_s"] == before["compile_s"]
    assert after["wall_time_s"] - before["wall_time_s"] < 1.0
    # in Python too, a total below what is done is refused (it rewrote the summary)
    spec = RunSpec.from_dict(read_meta(split)["spec"])
    short = dataclasses.replace(
        spec, train=dataclasses.replace(spec.train, generations=4)
    )
    with pytest.raises(
        ValueError, match="generations 4 is fewer than the 6 generations"
    ):
        prepare(short, split, resume=True)

    expected = _without_timing(read_metrics(full))
    assert [r["iteration"] for r in expected] == [1, 2, 3, 4, 5, 6]
    assert expected[2]["eval_return"] is not None
    assert _without_timing(read_metrics(split)) == expected
    reference, tensors = _tensors(full), _tensors(split)
    assert tensors.keys() == reference.keys()
    for name, value in reference.items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)


def _hold_run_dir(out):
    """Another process with a `RunLogger` open on ``out`` (as a second esrl run has)."""
    code = (
        "import sys; from esrl.logger import RunLogger\n"
        "logger = RunLogger(sys.argv[1], 2, 2, progress=False)\n"
        "print('holding', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline() == "holding\n"
    return holder


def test_a_second_process_never_writes_into_a_run_being_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMALL, "--generations", "2", "--out", str(out)]) == 0
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    prepared = prepare(RunSpec.from_dict(read_meta(out)["spec"]), out, resume=True)
    holder = _hold_run_dir(out)
    try:
        capsys.readouterr()
        for argv in (
            ["train", "--resume", str(out), "--generations", "4", "--no-progress"],
            [*SMALL, "--generations", "2", "--out", str(out), "--overwrite"],
        ):
            assert main(argv) == 2  # refused before compiling
            assert "another process is writing to" in capsys.readouterr().err
        # a process that validated before the other took the directory
        spec = dataclasses.replace(
            prepared.spec, train=dataclasses.replace(prepared.spec.train, generations=4)
        )
        with pytest.raises(RunDirBusy, match="wait for it to end"):
            fit(prepared._replace(spec=spec))
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files
    finally:
        holder.communicate("")
    assert check_run_dir(out, resume=True, overwrite=False)  # released with it


def test_an_interrupt_after_a_record_leaves_metrics_matching_the_checkpoint(
    tmp_path, monkeypatch
):
    """Ctrl-C (or SIGTERM) after generation 3's record, before its state is kept."""
    ctrl_c_at_record(monkeypatch, 3, written=True)
    out = tmp_path / "run"
    assert main([*SMALL, "--generations", "5", "--out", str(out)]) == 130
    assert read_meta(out)["counters"]["generation"] == 2
    # was [1, 2, 3]: a resume would have dropped record 3 only at its start
    assert [r["iteration"] for r in read_metrics(out)] == [1, 2]


def test_the_interrupt_message_is_a_command_that_resumes_an_odd_path(
    tmp_path, monkeypatch, capsys
):
    ctrl_c_at_record(monkeypatch, 2, written=False)
    out = tmp_path / "sweep 1" / "run"  # was printed bare: the shell split it
    assert main([*SMALL, "--generations", "3", "--out", str(out)]) == 130
    command = capsys.readouterr().err.split("continue with: ")[1].strip()
    assert shlex.split(command) == ["esrl", "train", "--resume", str(out)]


def test_the_printed_resume_command_keeps_tensorboard_logging(
    tmp_path, monkeypatch, capsys
):
    """It was dropped: ``esrl train --resume DIR`` without --tensorboard logged none."""
    log = ctrl_c_at_record(monkeypatch, 4, written=False)
    out = tmp_path / "run"
    argv = [*SMALL, "--generations", "5", "--tensorboard", "--out", str(out)]
    assert main(argv) == 130
    command = capsys.readouterr().err.split("continue with: ")[1].strip()
    monkeypatch.setattr(RunLogger, "log", log)
    assert main([*shlex.split(command)[1:], "--no-progress"]) == 0
    assert tensorboard_steps(out, "train_return_mean") == [[1, 2, 3], [4, 5]]
    assert read_meta(out)["spec"]["train"]["tensorboard"] is True


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def _run_with_ctrl_c(argv: list[str]) -> int | str:
    """``main(argv)``'s exit status, or "escaped" if the KeyboardInterrupt did."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        return "escaped"


@pytest.mark.parametrize("stage", ["setting up", "compiling"])
def test_an_interrupt_before_training_says_that_nothing_was_written(
    stage, tmp_path, monkeypatch, capsys
):
    """Ctrl-C while the run set up (a traceback) or compiled (exit 130, silent)."""
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    assert main([*SMALL, "--generations", "2", "--out", str(out)]) == 0
    before = (checkpoint_path(out).read_bytes(), read_metrics(out))
    capsys.readouterr()
    if stage == "compiling":
        monkeypatch.setattr("esrl.xla.aot", _ctrl_c)
    else:
        monkeypatch.setattr(ESTrainer, "init", _ctrl_c)
    resume = ["train", "--resume", str(out), "--generations", "4", "--no-progress"]
    assert _run_with_ctrl_c(resume) == 130
    assert capsys.readouterr().err == (
        "interrupted before training started; nothing was written, continue with: "
        f"esrl train --resume {out} --generations 4\n"  # was without: the run's 2
    )
    assert (checkpoint_path(out).read_bytes(), read_metrics(out)) == before
    assert _run_with_ctrl_c([*SMALL, "--out", str(fresh)]) == 130
    assert capsys.readouterr().err == (
        "interrupted before training started; nothing was written\n"
    )
    assert not checkpoint_path(fresh).exists()


def test_an_interrupt_while_writing_the_final_outputs_says_how_to_finish(
    tmp_path, monkeypatch, capsys
):
    """Ctrl-C while the curve was drawn: exit 130, silent, and no curve.png."""
    out = tmp_path / "run"
    monkeypatch.setattr("esrl.logger.plot_curve", _ctrl_c)
    assert main([*SMALL, "--generations", "2", "--out", str(out)]) == 130
    command = f"esrl train --resume {out}"
    assert capsys.readouterr().err == (
        f"interrupted after generation 2; checkpoint saved, continue with: {command}\n"
    )
    monkeypatch.undo()
    assert main([*shlex.split(command)[1:], "--no-progress"]) == 0
    assert (out / "curve.png").is_file() and (out / "summary.json").is_file()
    assert [r["iteration"] for r in read_metrics(out)] == [1, 2]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_whose_interrupt_python_dropped_still_stops_the_run(
    tmp_path, monkeypatch, capsys
):
    """It was lost: the run went on to the end (and a scheduler's SIGKILL after its
    grace period would lose every generation since the last checkpoint)."""
    log = RunLogger.log

    def log_then_collect(self, record):
        log(self, record)
        if record["iteration"] == 3:
            SignalledInDel()  # made and dropped: its __del__ runs here

    monkeypatch.setattr(RunLogger, "log", log_then_collect)
    out = tmp_path / "run"
    assert main([*SMALL, "--generations", "6", "--out", str(out)]) == 130
    assert capsys.readouterr().err.endswith(
        f"interrupted after generation 3; checkpoint saved, continue with: "
        f"esrl train --resume {out}\n"
    )
    assert read_meta(out)["counters"]["generation"] == 3
    assert [r["iteration"] for r in read_metrics(out)] == [1, 2, 3]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_dropped_while_setting_up_stops_before_compiling(
    tmp_path, monkeypatch, capsys
):
    init = ESTrainer.init

    def collect_then_init(self, key):
        SignalledInDel()
        return init(self, key)

    monkeypatch.setattr(ESTrainer, "init", collect_then_init)
    assert main([*SMALL, "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.endswith(
        "interrupted before training started; nothing was written\n"
    )
    assert not (tmp_path / "run").exists()


class NaNMemoryEnv(MemoryEnv):
    """Answering 1 at t=0 returns a NaN reward."""

    def step(self, key, state, action, params=None):
        obs, state2, reward, term, trunc, info = super().step(
            key, state, action, params
        )
        reward = jnp.where((state.t == 0) & (action == 1), jnp.nan, reward)
        return obs, state2, reward, term, trunc, info


@dataclasses.dataclass
class DataclassMemoryEnv(MemoryEnv):
    """A user's environment as a plain @dataclass: unhashable (eq without frozen)."""

    delay: int = 2
    num_cues: int = 2


def test_an_unhashable_environment_is_refused_with_what_to_do(tmp_path):
    # was: "unhashable type" from inside jit, after the run directory was set up
    spec = RunSpec(
        env="test/Memory-v0",
        agent_config=EggrollConfig(population=4),
        train=TrainConfig(generations=1, progress=False),
    )
    message = r"must be hashable .* @dataclass\(frozen=True\)"
    with pytest.raises(TypeError, match=message):
        train(spec, tmp_path, env=DataclassMemoryEnv())
    with pytest.raises(esrl.EnvCheckError, match=message):
        esrl.check_env(DataclassMemoryEnv())


def test_nan_members_are_reported_and_harmless(tmp_path, capsys):
    spec = RunSpec(
        env="test/Memory-v0",
        agent_config=EggrollConfig(population=32, sigma=0.5),
        train=TrainConfig(
            generations=3, eval_every=3, eval_episodes=8, progress=False,
            rollout=RolloutConfig(horizon=8, episodes=4, normalize_obs=True),
            policy=PolicySpec(hidden=8),
        ),
    )  # fmt: skip
    result = train(spec, tmp_path, env=NaNMemoryEnv(delay=2))
    records = read_metrics(tmp_path)
    assert records[0]["nonfinite_members"] > 0
    assert "returned NaN/inf" in capsys.readouterr().err
    assert all(np.isfinite(r["train_return_mean"]) for r in records)
    leaves = jax.tree.leaves(result.state)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves if x.dtype.kind == "f")


@pytest.mark.parametrize("field", ["generations", "eval_every", "checkpoint_every"])
def test_train_config_rejects_nonpositive_counts(field):
    with pytest.raises(ValueError, match=f"{field} must be >= 1"):
        TrainConfig(**{field: 0})


@pytest.mark.parametrize("seed", [-1, 2**32, 2**63, 1.0])
def test_seeds_that_jax_would_truncate_or_refuse_are_errors(seed, capsys):
    # was: 2**32 trained exactly as seed 0 (PRNGKey keeps the low 32 bits), 2**63
    # an OverflowError traceback, -1 the seed 2**32 - 1
    rule = r"seed must be an integer in \[0, 2\*\*32\)"
    with pytest.raises(ValueError, match=rule):
        TrainConfig(seed=seed)
    with pytest.raises(ValueError, match=rule):
        PPORunSpec(env="gymnax/CartPole-v1", seed=seed)
    with pytest.raises(ValueError, match=rule):
        evaluate_run("no-run", seed=seed)
    if isinstance(seed, int):
        assert main([*CARTPOLE, "--seed", str(seed)]) == 2
        assert main(["eval", "no-run", "--seed", str(seed)]) == 2
        assert capsys.readouterr().err.count("must be an integer in [0, 2**32)") == 2
    TrainConfig(seed=2**32 - 1)


def test_blocked_rollout_equals_one_block():
    def rollout(block):
        config = TrainConfig(
            block=block, rollout=RolloutConfig(horizon=8, episodes=2, normalize_obs=True),
            policy=PolicySpec(hidden=8),
        )  # fmt: skip
        strategy = EggrollConfig(population=16).strategy()
        trainer = ESTrainer(MemoryEnv(delay=2), strategy, config)
        assert trainer.block == (block or 16)
        return jax.jit(trainer.rollout)(trainer.init(jax.random.PRNGKey(3)))

    whole, blocked = rollout(None), rollout(4)  # (result, kept noise) each
    assert float(jnp.std(whole[0].returns)) > 0  # members differ: their order matters
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(blocked), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_odd_blocks_of_antithetic_pairs_equal_one_block():
    # a block (or a device's share) of 3 splits a pair: its noise is not kept per pair
    def generation(block):
        config = TrainConfig(
            block=block, rollout=RolloutConfig(horizon=8), policy=PolicySpec(hidden=8)
        )
        strategy = EggrollConfig(population=6).strategy()
        trainer = ESTrainer(MemoryEnv(delay=2), strategy, config)
        return jax.jit(trainer.generation)(trainer.init(jax.random.PRNGKey(3)))

    whole = generation(None)
    for block in (3, 1):
        for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(generation(block))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_update_from_the_kept_noise_equals_the_regenerated_one():
    config = TrainConfig(
        block=4, rollout=RolloutConfig(horizon=8), policy=PolicySpec(hidden=8)
    )
    strategy = EggrollConfig(population=16).strategy()
    kept = ESTrainer(MemoryEnv(delay=2), strategy, config)
    redrawn = ESTrainer(MemoryEnv(delay=2), strategy, config)
    redrawn.keeps_noise = False
    assert kept.keeps_noise
    state = kept.init(jax.random.PRNGKey(4))
    (a, _), (b, _) = (jax.jit(t.generation)(state) for t in (kept, redrawn))
    moved = jax.tree.map(
        lambda x, y: float(jnp.abs(x - y).max()), a.es.params, state.es.params
    )
    assert max(jax.tree.leaves(moved)) > 0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_an_environment_object_as_the_spec_env_is_refused_at_once():
    # was: AttributeError: 'GymnaxEnv' object has no attribute 'partition' (in make)
    env = esrl.make("gymnax/CartPole-v1")
    with pytest.raises(TypeError, match=r"with train\(spec, DIR, env=\.\.\.\)"):
        RunSpec(env=env)


def test_block_size():
    assert block_size(16384, None, "cpu") == 2048
    assert block_size(3000, None, "cpu") == 1500
    assert block_size(2049, None, "cpu") == 683  # odd share: any divisor
    # no divisor of whole pairs near CPU_BLOCK (4106 = 2 x 2053): one block, not
    # 2053 sequential blocks of 2 (was: hundreds of times slower)
    assert block_size(4106, None, "cpu") == 4106
    assert block_size(16384, None, "gpu") == 16384
    assert block_size(100, None, "cpu") == 100
    assert block_size(100, 20, "gpu") == 20
    with pytest.raises(ValueError, match="does not divide the 100 members"):
        block_size(100, 30, "cpu")


def test_env_steps_of_a_generation_past_int32_are_counted_exactly():
    # the rollout reports int32 steps per member; a hyperscale generation
    # (e.g. 262144 members x 10 episodes x 1000 steps) passes 2^31 in total
    per_member = np.full(4, 2**30, np.int32)
    record = _record(1, {"generation_env_steps": per_member}, Counters(), 1.0)
    assert record["env_steps"] == 2**32
