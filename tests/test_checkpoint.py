"""Checkpoints round-trip exactly and atomically; the run logger's files."""

from __future__ import annotations

import functools
import json
import os
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from interrupts import tensorboard_steps

from esrl.checkpoint import (
    checkpoint_path,
    has_checkpoint,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from esrl.logger import BASELINE, FINAL_OUTPUTS, RunLogger, read_metrics


def _tree(seed: int):
    k = jax.random.PRNGKey(seed)
    params = {
        "w": jax.random.normal(k, (3, 4)),
        "b16": jax.random.normal(k, (5,)).astype(jnp.bfloat16),
    }
    return {
        "params": params,
        "opt": optax.adam(1e-3).init(params),
        "raw_key": k,
        "typed_key": jax.random.key(seed),
        "step": jnp.int32(seed),
        "flag": jnp.array([True, False]),
    }


def _assert_same(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact(tmp_path):
    tree = _tree(1)
    save_checkpoint(tmp_path, tree, {"generation": 7, "spec": {"env": "x"}})
    assert has_checkpoint(tmp_path)
    restored, meta = load_checkpoint(tmp_path, template=_tree(2))
    _assert_same(tree, restored)
    assert meta == {"generation": 7, "spec": {"env": "x"}}
    assert read_meta(tmp_path)["generation"] == 7
    # never pickle: the file is safetensors (8-byte header length, then JSON)
    raw = checkpoint_path(tmp_path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + n])["__metadata__"]["format"] == "esrl-checkpoint-v1"


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, _tree(1), {"generation": 1})

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, _tree(2), {"generation": 2})
    monkeypatch.undo()
    restored, meta = load_checkpoint(tmp_path, template=_tree(0))
    assert meta["generation"] == 1
    _assert_same(restored, _tree(1))


def test_mismatched_template_and_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        read_meta(tmp_path)
    save_checkpoint(tmp_path, {"w": jnp.zeros((2, 3))}, {})
    with pytest.raises(ValueError, match="has shape"):
        load_checkpoint(tmp_path, {"w": jnp.zeros((4, 3))})
    with pytest.raises(ValueError, match="does not match this run"):
        load_checkpoint(tmp_path, {"v": jnp.zeros((2, 3))})


@pytest.mark.parametrize("saved_x64", [True, False])
def test_a_checkpoint_read_in_the_other_precision_says_to_set_jax_enable_x64(
    tmp_path, saved_x64
):
    # was: float64 parameters silently cast to float32 (or back): a resume continued
    # another run, and esrl eval missed final_eval_return
    with jax.enable_x64(saved_x64):
        save_checkpoint(tmp_path, {"w": jnp.ones(3), "n": jnp.zeros((), jnp.int32)}, {})
    with jax.enable_x64(not saved_x64):
        template = {"w": jnp.ones(3), "n": jnp.zeros((), jnp.int32)}
        want = "with JAX_ENABLE_X64=1" if saved_x64 else "without JAX_ENABLE_X64"
        with pytest.raises(ValueError, match=want):
            load_checkpoint(tmp_path, template)


def test_run_logger_writes_the_contract_files_and_trims_on_resume(tmp_path):
    rows = [
        {"iteration": i, "env_steps": 10 * i, "wall_time_s": 0.1 * i,
         "train_return_mean": float(i), "train_return_max": float(2 * i)}
        for i in range(1, 6)
    ]  # fmt: skip
    rows[1]["eval_return"] = 3.0
    rows[2]["train_return_mean"] = float("nan")
    logger = RunLogger(tmp_path, total=5, progress=False, tensorboard=True)
    for r in rows:
        logger.log(r)
    logger.close()
    records = read_metrics(tmp_path)
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5]
    assert records[2]["train_return_mean"] is None and records[1]["eval_return"] == 3.0
    assert any((tmp_path / "tb").iterdir())
    # a run killed after its checkpoint at 3 left lines 4-5: resuming drops them
    logger = RunLogger(tmp_path, total=6, start=3, progress=False)
    for i in (4, 5, 6):
        logger.log({**rows[0], "iteration": i, "env_steps": 100 + i})
    logger.finish({"env": "x", "final_eval_return": 3.0})
    records = read_metrics(tmp_path)
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[3]["env_steps"] == 104
    assert json.loads((tmp_path / "summary.json").read_text())["env"] == "x"
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / BASELINE).write_text("{}")
    # a fresh run in the directory (--overwrite) drops the old run's end results
    RunLogger(tmp_path, total=6, progress=False).close()
    assert not any((tmp_path / name).exists() for name in FINAL_OUTPUTS)
    assert read_metrics(tmp_path) == []


def test_a_resume_within_the_second_keeps_the_earlier_tensorboard_file(
    tmp_path, monkeypatch
):
    """Event files were named by the second and opened "wb": a resume in the same
    second (a fast compile, a cached one) overwrote the interrupted run's scalars."""
    import tensorboardX.event_file_writer as writer

    monkeypatch.setattr(writer, "time", types.SimpleNamespace(time=lambda: 1.7e9))
    for start, stop in ((0, 3), (2, 5)):  # a resume after the checkpoint at 2
        logger = RunLogger(tmp_path, total=4, start=start, progress=False,
                           tensorboard=True)  # fmt: skip
        for i in range(start + 1, stop):
            logger.log({"iteration": i, "env_steps": i})
        logger.close()
    assert tensorboard_steps(tmp_path, "env_steps") == [[1, 2], [3, 4]]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_checkpoint_is_a_clear_error(tmp_path, damage):
    save_checkpoint(tmp_path, _tree(1), {"generation": 1})
    path = checkpoint_path(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-100] if damage == "truncate" else b"not a checkpoint")
    with pytest.raises(ValueError, match="is damaged and cannot be read"):
        read_meta(tmp_path)
    with pytest.raises(ValueError, match="is damaged and cannot be read"):
        load_checkpoint(tmp_path, template=_tree(0))


def test_a_metrics_line_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    logger = RunLogger(tmp_path, total=3, progress=False)
    for i in (1, 2):
        logger.log({"iteration": i, "env_steps": 10 * i})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 3, "env_st')  # killed mid-write, after checkpoint 2
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2]
    logger = RunLogger(tmp_path, total=3, start=2, progress=False)
    logger.log({"iteration": 3, "env_steps": 30})
    logger.close()
    assert [r["env_steps"] for r in read_metrics(tmp_path)] == [10, 20, 30]


@pytest.mark.parametrize("out", ["runs/[sweep]/a", "runs/[/x]", "/scratch/" + "a" * 90])
def test_run_logger_messages_print_paths_verbatim(out, capsys):
    logger = RunLogger(None, total=1, progress=False)
    logger.message(f"continue with: esrl train --resume {out}")  # as copied by users
    assert f"continue with: esrl train --resume {out}\n" in capsys.readouterr().err


def test_run_logger_progress_lines_stay_whole_in_a_log_file(capsys):
    # stderr redirected to a file: one plain line per evaluation, none split by the
    # console's 80 columns (was "... 1,631k" and "steps/s" on the next line)
    title = "openai_es gymnax/Pendulum-v1 [sweep a]"  # no markup either
    logger = RunLogger(None, total=100000, title=title)
    logger.log({"iteration": 50, "train_return_mean": -808.2, "train_return_max": -1.0,
                "eval_return": -526.2, "env_steps_per_s": 1.631e6})  # fmt: skip
    line = f"{title} 50/100000 mean -808.2 max -1.0 eval -526.2 1,631k steps/s\n"
    assert capsys.readouterr().err == line
    # PPO logs no train_return_max: no "max -" on every line
    logger.log({"iteration": 100000, "train_return_mean": 1.5})
    assert capsys.readouterr().err == f"{title} 100000/100000 mean 1.5 eval -526.2\n"


def test_progress_bar_shows_the_title_verbatim(monkeypatch):
    # on a terminal, rich read "[...]" in the title as markup and dropped it
    import io

    from rich.console import Console

    import esrl.logger

    screen = io.StringIO()
    terminal = functools.partial(
        Console, file=screen, force_terminal=True, width=200, color_system=None
    )
    monkeypatch.setattr(esrl.logger, "Console", lambda file: terminal())
    with RunLogger(None, total=2, title="eggroll my/Grid[small]-v0") as logger:
        logger.log({"iteration": 2, "train_return_mean": 1.0})
    assert "eggroll my/Grid[small]-v0" in screen.getvalue()


def test_a_config_with_infinity_is_saved_and_resumed(tmp_path):
    from esrl.rollout import RolloutConfig
    from esrl.runs import check_run_dir, save_run
    from esrl.train import Counters, RunSpec, TrainConfig

    # obs_clip=inf (no clipping) is a valid setting; the save used to raise
    # "Out of range float values are not JSON compliant" after the first generations
    rollout = RolloutConfig(normalize_obs=True, obs_clip=float("inf"))
    spec = RunSpec("gymnax/CartPole-v1", train=TrainConfig(rollout=rollout))
    save_run(tmp_path, spec, {"w": jnp.zeros(2)}, Counters(generation=3))
    saved = check_run_dir(tmp_path, resume=True, overwrite=False)
    assert RunSpec.from_dict(saved) == spec


def test_an_abstract_template_restores_typed_keys(tmp_path):
    tree = _tree(1)
    save_checkpoint(tmp_path, tree, {})
    restored, _ = load_checkpoint(tmp_path, template=jax.eval_shape(lambda: tree))
    _assert_same(tree, restored)
    split = {"k": jax.random.split(jax.random.key(3, impl="rbg"), 4)}
    save_checkpoint(tmp_path, split, {})
    restored, _ = load_checkpoint(tmp_path, template=jax.eval_shape(lambda: split))
    _assert_same(split, restored)
    assert jax.random.key_impl(restored["k"]) == jax.random.key_impl(split["k"])


def test_a_fresh_run_replacing_a_directory_drops_the_old_checkpoint(tmp_path):
    save_checkpoint(tmp_path, _tree(1), {"counters": {"generation": 100}})
    logger = RunLogger(tmp_path, total=100, progress=False)  # --overwrite
    logger.log({"iteration": 1, "env_steps": 10})
    logger.close()  # killed (SIGKILL, OOM) before the new run's first checkpoint
    # --resume must not continue the old run on top of the new run's metrics
    assert not has_checkpoint(tmp_path)
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1]


def test_a_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, _tree(1), {"generation": 1})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, _tree(2), {"generation": 2})
    monkeypatch.undo()
    # a partial copy (as large as a checkpoint) would stay there for good
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint_path(tmp_path).name]
    assert read_meta(tmp_path)["generation"] == 1
    # a process killed mid-save (SIGKILL) cleans nothing: the next save does
    (tmp_path / ".checkpoint.safetensors.tmp-99999").write_bytes(b"partial")
    save_checkpoint(tmp_path, _tree(3), {"generation": 3})
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint_path(tmp_path).name]


def test_a_resumed_run_whose_metrics_were_deleted_keeps_its_checkpoint(tmp_path):
    save_checkpoint(tmp_path, _tree(1), {"counters": {"generation": 3}})
    logger = RunLogger(tmp_path, total=6, start=3, progress=False)  # --resume
    logger.log({"iteration": 4, "env_steps": 40})
    logger.close()  # killed before the next checkpoint: the run resumes from 3 again
    assert has_checkpoint(tmp_path)
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [4]


def test_a_kill_while_finishing_leaves_whole_files_and_no_temporary_ones(
    tmp_path, monkeypatch
):
    from matplotlib.figure import Figure

    logger = RunLogger(tmp_path, total=1, progress=False)
    logger.log({"iteration": 1, "env_steps": 10, "train_return_mean": 1.0})
    logger.finish({"env": "x"})
    curve = (tmp_path / "curve.png").read_bytes()

    def killed_mid_write(self, path, **kwargs):
        Path(path).write_bytes(curve[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", killed_mid_write)
    # a finished run resumed (an extension would remove the shorter run's files first)
    logger = RunLogger(tmp_path, total=1, start=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        logger.finish({"env": "x"})
    assert (tmp_path / "curve.png").read_bytes() == curve  # was cut to 100 bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "curve.png", "metrics.jsonl", "summary.json",
    ]  # fmt: skip
