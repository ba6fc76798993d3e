"""A user's journey through LLM fine-tuning: own model dirs, own tasks, resume, signals."""

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from esrl.envs.llm import Problem, Task
from esrl.envs.llm import finetune as finetune_module
from esrl.envs.llm.env import make_task_env
from esrl.envs.llm.evaluate import score_completions
from esrl.envs.llm.finetune import FinetuneConfig, finetune
from esrl.envs.llm.model import LMConfig, init_params, load_model, save_model
from esrl.envs.llm.pretrain import PretrainConfig
from esrl.envs.llm.tasks import countdown_task
from esrl.envs.llm.tokenizer import VOCAB_SIZE, encode
from interrupts import SignalledInDel
from script_loader import load_script

import esrl
from esrl.runs import sigterm_as_interrupt

TINY = LMConfig(width=16, layers=1, mlp_hidden=16)
SMALL = ["--population", "4", "--prompts", "2", "--eval-size", "2",
         "--train-size", "8", "--skip-train", "0", "--no-progress"]  # fmt: skip


def _script():
    return load_script("train_countdown")


@functools.cache
def _params(config: LMConfig) -> dict:
    return init_params(jax.random.key(0), config)


def _model(directory: Path, config: LMConfig = TINY) -> Path:
    return save_model(directory, config, _params(config))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_whose_interrupt_python_dropped_still_stops_finetuning(monkeypatch):
    # was: lost; the run went on to its last generation (a scheduler's SIGKILL after
    # its grace period would lose every generation since the last checkpoint)
    def generation(finetuner, state, g):  # no model: only the loop is under test
        return SimpleNamespace(generation=g + 1), {"iteration": g + 1}

    def log(record):
        if record["iteration"] == 1:
            SignalledInDel()  # made and dropped: its __del__ runs here

    monkeypatch.setattr(finetune_module, "_generation", generation)
    tuner, saved = SimpleNamespace(config=FinetuneConfig(generations=4)), []
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        state = SimpleNamespace(generation=0)
        finetune(tuner, state, log=log, on_checkpoint=lambda g, s: saved.append(g))
    assert saved == [1]


@pytest.mark.parametrize("resume", [False, True])
def test_ctrl_c_while_setting_up_says_what_to_do(resume, monkeypatch, capsys):
    # was: a KeyboardInterrupt traceback (loading the model, drawing the splits)
    script = _script()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "resumed", interrupted)  # reads the checkpoint
    monkeypatch.setattr(script, "prepare_finetune", interrupted)
    argv = ["--resume", "run"] if resume else ["--out", "run"]
    assert script.main(argv) == 130
    again = "continue with --resume run" if resume else "start again"
    assert capsys.readouterr().out == (
        f"interrupted before training started; nothing was written, {again}\n"
    )


def _rewrite(directory: Path, text: str) -> Path:
    (directory / "config.json").write_text(text)
    return directory


def test_model_dirs_that_do_not_fit_the_tokenizer_or_layout_are_clear_errors(
    tmp_path,
):
    # was: vocab 256 trained silently (BOS 257 read a clamped embedding row), a
    # config.json without "width" blamed a tensor's shape, and a malformed
    # config.json or safetensors file crashed with TypeError/AttributeError/
    # SafetensorError tracebacks
    small = LMConfig(width=16, layers=1, mlp_hidden=16, vocab_size=256)
    with pytest.raises(ValueError, match=f"vocab_size 256.*{VOCAB_SIZE}"):
        load_model(_model(tmp_path / "vocab", small))
    meta = json.loads((_model(tmp_path / "ok") / "config.json").read_text())
    del meta["width"]
    with pytest.raises(ValueError, match="config.json lacks 'width'"):
        load_model(_rewrite(_model(tmp_path / "nowidth"), json.dumps(meta)))
    for name, text in [("str", '{"width": "16", "layers": 1, "mlp_hidden": 16}'),
                       ("list", "[16, 1, 16]"), ("json", "{")]:  # fmt: skip
        with pytest.raises(ValueError, match="config.json"):
            load_model(_rewrite(_model(tmp_path / name), text))
    torn = _model(tmp_path / "torn")
    (torn / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(torn)


def test_train_countdown_reports_a_bad_model_dir_in_one_line(tmp_path, capsys):
    model = _rewrite(_model(tmp_path / "m"), "[16, 1, 16]")
    argv = ["--model", str(model), *SMALL, "--out", str(tmp_path / "run")]
    assert _script().main(argv) == 2
    assert capsys.readouterr().err.startswith("train_countdown.py: error: ")


def _generate(seed: int, count: int) -> list[Problem]:
    return [Problem(f"q{seed}-{i}\n", "", None) for i in range(count)]


@pytest.mark.parametrize("value", [None, "1.0", [0.5, 1.0]])
def test_a_score_that_is_not_a_number_is_a_clear_error(value):
    # was: None became a NaN reward (the worst, silently), "1.0" was parsed as 1.0
    task = Task("mine", _generate, lambda text, problem: value)
    completions = np.array([[encode("x")]])  # one member, one prompt
    with pytest.raises(TypeError, match="task 'mine': score returned"):
        score_completions(task, _generate(0, 1), completions)
    with pytest.raises(TypeError, match="score returned"):  # before any rollout
        make_task_env(task, size=2, eval_pool=2)


def test_task_budgets_and_countdown_values_are_checked():
    # was: accepted; max_new_tokens=0 made an env whose completion had no room, and
    # max_value=0 made generate loop forever (no legal target exists)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        Task("mine", _generate, lambda text, problem: 0.0, max_new_tokens=0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        esrl.make("llm/reasoning-gym/chain_sum", max_new_tokens=0, size=2)
    with pytest.raises(ValueError, match="max_value must be >= 1, got 0"):
        countdown_task(3, max_value=0)


def test_pretrain_seed_must_be_non_negative():
    # was: accepted, then numpy's "expected non-negative integer" traceback
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
        PretrainConfig(seed=-1)


@pytest.mark.parametrize("script", ["train_countdown", "countdown_breakdown"])
def test_a_run_of_esrl_train_is_refused_in_one_line(
    tmp_path, capsys, monkeypatch, script
):
    # was: KeyError 'agent_config' (a traceback) from --resume / the breakdown
    from esrl.checkpoint import save_checkpoint

    meta = {"spec": {"env": "gymnax/CartPole-v1"}, "counters": {}}  # esrl train's
    save_checkpoint(tmp_path / "run", {"w": np.zeros(2)}, meta)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    run = str(tmp_path / "run")
    argv = ["--resume", run] if script == "train_countdown" else [run]
    assert load_script(script).main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{script}.py: error: ") and "train_countdown.py run" in err
