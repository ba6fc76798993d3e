"""Backprop pretraining: the corpus format, the loss mask, and that the loss falls."""

import json

import jax
import numpy as np
import pytest
from esrl.envs.llm.model import (
    WEIGHTS_DIR,
    LMConfig,
    RecurrentLM,
    init_params,
    load_model,
)
from esrl.envs.llm.pretrain import (
    EVAL_POOL,
    PretrainConfig,
    as_equation,
    build_corpus,
    encode_examples,
    pretrain,
    sequence_loss,
)
from esrl.envs.llm.reward import countdown_reward
from esrl.envs.llm.tasks import countdown_task
from esrl.envs.llm.tokenizer import BOS, EOS, PAD, decode, encode
from script_loader import load_script

from esrl.checkpoint import read_meta

TINY = LMConfig(width=16, layers=1, mlp_hidden=16)
SMALL_MIX = (("countdown-3", 1.0),)
SCRIPT_TINY = ["--steps", "1", "--batch-size", "2", "--width", "8", "--layers", "1",
               "--mlp-hidden", "8"]  # fmt: skip


def test_corpus_examples_and_mask():
    problem = countdown_task(3).generate(0, 1)[0]
    ids, mask = encode_examples([problem])
    prompt = encode(problem.prompt, bos=True)
    full = prompt + encode(problem.answer, eos=True)
    assert ids[0].tolist() == full and ids[0, 0] == BOS and ids[0, -1] == EOS
    assert mask[0].tolist() == [0.0] * len(prompt) + [1.0] * (len(full) - len(prompt))
    assert decode(ids[0]) == problem.prompt + problem.answer


def test_equation_style_is_rejected_by_the_reward():
    problem = countdown_task(3).generate(1, 1)[0]
    numbers, target = problem.data["numbers"], problem.data["target"]
    assert countdown_reward(problem.answer, numbers, target) == pytest.approx(1.1)
    equation = as_equation(problem).answer
    assert equation.endswith(f"={target}</answer>")
    assert countdown_reward(equation, numbers, target) == pytest.approx(0.1)


def test_corpus_mixes_styles_at_the_configured_fraction():
    config = PretrainConfig(
        steps=50, batch_size=8, mix=SMALL_MIX, equation_fraction=0.3
    )
    ((name, ids, _),) = build_corpus(config)
    texts = [decode(row) for row in ids]
    share = np.mean(["=" in t.split("<answer>")[1] for t in texts])
    assert name == "countdown-3" and len(texts) == 50 * 8 + 1 and 0.2 < share < 0.4


def test_loss_ignores_padding_and_prompt():
    model, params = RecurrentLM(TINY), init_params(jax.random.key(0), TINY)
    ids, mask = encode_examples(countdown_task(3).generate(2, 4))
    loss = jax.jit(sequence_loss, static_argnums=1)
    base = loss(params, model, ids, mask)
    padded = np.pad(ids, ((0, 0), (0, 5)), constant_values=PAD)
    assert loss(params, model, padded, np.pad(mask, ((0, 0), (0, 5)))) == (
        pytest.approx(float(base), rel=1e-5)
    )


def test_pretraining_lowers_the_loss():
    config = PretrainConfig(steps=60, batch_size=16, lr=1e-2, warmup=5, mix=SMALL_MIX)
    params, history = pretrain(config, TINY, log_every=20)
    assert [h["step"] for h in history] == [20, 40, 60]
    assert history[-1]["loss"] < history[0]["loss"] - 0.5
    assert jax.tree.structure(params) == jax.tree.structure(
        init_params(jax.random.key(0), TINY)
    )


def test_interrupted_pretraining_resumes_exactly_from_its_checkpoint(tmp_path):
    # was: Ctrl-C or SIGTERM lost every step trained (no checkpoint)
    config = PretrainConfig(steps=6, batch_size=4, warmup=2, mix=SMALL_MIX)
    whole, history = pretrain(config, TINY, log_every=2)

    def stop_at_step_4(record):
        if record["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(config, TINY, log_every=2, log=stop_at_step_4, checkpoint_dir=tmp_path)
    assert read_meta(tmp_path)["step"] == 3  # step 4's record was not logged
    params, resumed = pretrain(config, TINY, log_every=2, checkpoint_dir=tmp_path)
    jax.tree.map(np.testing.assert_array_equal, params, whole)
    assert [(h["step"], h["loss"]) for h in resumed] == [
        (h["step"], h["loss"]) for h in history
    ]
    other = PretrainConfig(steps=7, batch_size=4, warmup=2, mix=SMALL_MIX)
    with pytest.raises(ValueError, match="written by another pretraining"):
        pretrain(other, TINY, checkpoint_dir=tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be >= 1, got 0"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"equation_fraction": 1.5}, r"equation_fraction must be in \[0, 1\]"),
        # was: accepted; --time-limit 0 trained one step and saved that model over
        # the shipped weights (the default --out)
        ({"time_limit_s": 0.0}, "time_limit_s must be > 0, got 0.0"),
    ],
)
def test_bad_pretrain_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PretrainConfig(**kwargs)


@pytest.mark.parametrize("eval_size", ["0", "-1", str(EVAL_POOL + 1)])
def test_pretrain_script_refuses_bad_eval_size_before_training(
    eval_size, tmp_path, capsys
):
    # was: found only after training (a traceback), or a held-out set larger than
    # EVAL_POOL that overlapped the corpus
    script = load_script("pretrain_lm")
    with pytest.raises(SystemExit) as exit_info:
        script.main([*SCRIPT_TINY, "--out", str(tmp_path), "--eval-size", eval_size])
    assert exit_info.value.code == 2
    assert "--eval-size must be in [1, 1000]" in capsys.readouterr().err
    assert not (tmp_path / "model.safetensors").exists()


def test_pretrain_script_refuses_a_file_as_out_before_training(tmp_path, capsys):
    # was: a FileExistsError traceback once training was over (the model was lost)
    script = load_script("pretrain_lm")
    out = tmp_path / "taken"
    out.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        script.main([*SCRIPT_TINY, "--out", str(out)])
    assert exit_info.value.code == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_pretrain_script_records_the_options_it_was_given(tmp_path):
    # was: config.json's "command" came from sys.argv, not main's argv
    argv = [*SCRIPT_TINY, "--eval-size", "1", "--seed", "3", "--out", str(tmp_path)]
    load_script("pretrain_lm").main(argv)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["command"] == (f"python scripts/pretrain_lm.py {' '.join(argv)}")
    assert meta["pretrain"]["seed"] == 3 and meta["pretrain"]["steps"] == 1
    config, _ = load_model(tmp_path)
    assert (config.width, config.layers, config.mlp_hidden) == (8, 1, 8)


def test_pretrain_script_continues_an_interrupted_run_with_resume(
    tmp_path, monkeypatch, capsys
):
    script, out = load_script("pretrain_lm"), tmp_path / "lm"
    argv = [*SCRIPT_TINY, "--steps", "4", "--eval-size", "1", "--out", str(out)]
    real = script.pretrain

    def interrupted(*args, **kwargs):  # Ctrl-C once step 2 is logged
        def log(record):
            if record["step"] == 3:
                raise KeyboardInterrupt

        return real(*args, **{**kwargs, "log_every": 1, "log": log})

    monkeypatch.setattr(script, "pretrain", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 130
    command = f"python scripts/pretrain_lm.py {' '.join(argv)} --resume"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted after step 2 of 4: the checkpoint in {out} keeps it; "
        f"continue with: {command}"
    )
    monkeypatch.setattr(script, "pretrain", real)
    with pytest.raises(SystemExit) as exit_info:  # not without --resume
        script.main(argv)
    assert exit_info.value.code == 2
    assert "holds an interrupted pretraining (step 2 of 4)" in capsys.readouterr().err
    script.main([*argv, "--resume"])
    meta = json.loads((out / "config.json").read_text())
    assert meta["steps_done"] == 4
    # the command that makes the model from scratch, not the resume's
    assert meta["command"] == f"python scripts/pretrain_lm.py {' '.join(argv)}"
    assert not (out / "checkpoint.safetensors").exists()  # the model replaces it


def test_pretrain_help_says_the_default_out_is_the_shipped_model(capsys):
    # was: "--out OUT  output directory", though the default overwrites the
    # shipped weights; no default was shown
    with pytest.raises(SystemExit):
        load_script("pretrain_lm").parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {WEIGHTS_DIR})" in text and "overwrites" in text
    assert "(default: 1300)" in text  # --steps
