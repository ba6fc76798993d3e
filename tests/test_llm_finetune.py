"""ES fine-tuning: it learns an easy task, splits stay clean, the script's outputs."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from esrl.agents.eggroll import EggrollConfig
from esrl.envs.llm import Problem, Task
from esrl.envs.llm.finetune import FinetuneConfig, Finetuner, _finetune_splits, finetune
from esrl.envs.llm.model import LMConfig, RecurrentLM, init_params, save_model
from esrl.envs.llm.pretrain import EVAL_POOL
from esrl.envs.llm.tasks import countdown_task, make_splits
from script_loader import load_script

TINY = LMConfig(width=16, layers=1, mlp_hidden=16)
ROOT = Path(__file__).resolve().parents[1]


def _closeness_to_m(completion: str, problem: Problem) -> float:
    """Easy graded reward: how close each generated character is to 'm'."""
    if not completion:
        return 0.0
    scores = [max(0.0, 1.0 - abs(ord(c) - ord("m")) / 64) for c in completion]
    return float(np.mean(scores))


def _easy_task() -> Task:
    def generate(seed, count):
        rng = np.random.default_rng(seed)
        return [Problem(f"q{rng.integers(10**6)}\n", "", None) for _ in range(count)]

    return Task("easy-m", generate, _closeness_to_m, max_new_tokens=4)


def _tuner(generations: int) -> Finetuner:
    agent = EggrollConfig(population=32, sigma=0.05, lr=0.03, rank=1,
                          fitness_shaping="raw", exclude=())  # fmt: skip
    config = FinetuneConfig(generations=generations, prompts_per_generation=4,
                            train_size=64, eval_size=16, skip_train=0)  # fmt: skip
    return Finetuner(RecurrentLM(TINY), _easy_task(), agent.strategy(), config)


def test_es_finetuning_raises_reward_on_easy_task():
    params = init_params(jax.random.key(0), TINY)
    tuner = _tuner(25)
    before = tuner.evaluate(params).reward_mean
    state, history = finetune(tuner, tuner.init(jax.random.key(1), params))
    after = tuner.evaluate(state.params).reward_mean
    assert len(history) == 25 and int(state.generation) == 25
    assert after > before + 0.2, (before, after)
    early = np.mean([r["train_return_mean"] for r in history[:5]])
    late = np.mean([r["train_return_mean"] for r in history[-5:]])
    assert late > early


def test_interrupt_checkpoints_the_generations_done():
    tuner, saved = _tuner(10), []

    def log(record):
        if record["iteration"] == 3:
            raise KeyboardInterrupt

    state = tuner.init(jax.random.key(1), init_params(jax.random.key(0), TINY))
    with pytest.raises(KeyboardInterrupt):
        finetune(tuner, state, log=log, on_checkpoint=lambda g, s: saved.append((g, s)))
    ((generation, last),) = saved  # generation 3's record was not logged
    assert generation == int(last.generation) == 2


@pytest.mark.parametrize("written", [False, True])
def test_interrupt_while_logging_keeps_metrics_and_checkpoint_together(
    tmp_path, monkeypatch, written
):
    # was: an interrupt in the metrics call before the line was written checkpointed
    # the generation anyway, so the resumed run's metrics.jsonl lacked its line
    from esrl.logger import RunLogger, read_metrics

    save_model(tmp_path / "model", TINY, init_params(jax.random.key(0), TINY))
    log, out = RunLogger.log, tmp_path / "run"

    def interrupted_log(self, record):
        if record["iteration"] == 2 and "train_return_mean" in record:
            monkeypatch.setattr(RunLogger, "log", log)
            if written:
                log(self, record)
            raise KeyboardInterrupt
        log(self, record)

    monkeypatch.setattr(RunLogger, "log", interrupted_log)
    common = ["--model", str(tmp_path / "model"), "--population", "4", "--prompts",
              "2", "--eval-size", "2", "--train-size", "8", "--skip-train", "0"]  # fmt: skip
    script = _script()
    assert script.main([*common, "--out", str(out), "--generations", "3"]) == 130
    assert [r["iteration"] for r in read_metrics(out)] == [0, 1]
    assert script.main(["--resume", str(out)]) == 0
    train = [r for r in read_metrics(out) if "train_return_mean" in r]
    assert [r["iteration"] for r in train] == [1, 2, 3]
    tokens = np.cumsum([r["tokens"] for r in train])  # each generation counted once
    assert [r["env_steps"] for r in train] == tokens.tolist()


def test_interrupt_before_the_first_checkpoint_does_not_offer_resume(
    tmp_path, monkeypatch, capsys
):
    # was: "continue with --resume DIR", which then failed: no checkpoint in DIR
    save_model(tmp_path / "model", TINY, init_params(jax.random.key(0), TINY))

    def interrupted(self, params):
        raise KeyboardInterrupt

    monkeypatch.setattr(Finetuner, "evaluate", interrupted)  # the initial evaluation
    out = tmp_path / "run"
    argv = ["--model", str(tmp_path / "model"), "--population", "4", "--prompts", "2",
            "--eval-size", "2", "--train-size", "8", "--skip-train", "0",
            "--out", str(out)]  # fmt: skip
    assert _script().main(argv) == 130
    assert "--resume" not in capsys.readouterr().out


def test_interrupted_overwrite_does_not_offer_to_resume_the_old_run(
    tmp_path, monkeypatch, capsys
):
    # was: "continue with --resume DIR", which resumed the run --overwrite replaces
    save_model(tmp_path / "model", TINY, init_params(jax.random.key(0), TINY))
    out, script = tmp_path / "run", _script()
    argv = ["--model", str(tmp_path / "model"), "--population", "4", "--prompts", "2",
            "--eval-size", "2", "--train-size", "8", "--skip-train", "0",
            "--generations", "1", "--no-progress", "--out", str(out)]  # fmt: skip
    assert script.main(argv) == 0
    capsys.readouterr()

    def interrupted(self, params):
        raise KeyboardInterrupt

    monkeypatch.setattr(Finetuner, "evaluate", interrupted)  # the initial evaluation
    assert script.main([*argv, "--population", "8", "--overwrite"]) == 130
    assert "--resume" not in capsys.readouterr().out


def test_finetune_splits_skip_the_pretraining_corpus():
    task = countdown_task(3)
    config = FinetuneConfig(train_size=300, eval_size=50, skip_train=500)
    splits = _finetune_splits(task, config)
    corpus = make_splits(task, 0, 500, EVAL_POOL).train  # what pretraining saw
    train = {p.prompt for p in splits.train}
    assert len(train) == 300 and not train & {p.prompt for p in corpus}
    assert not train & {p.prompt for p in splits.eval}
    assert splits.eval == make_splits(task, 0, 0, 50).eval  # the fixed held-out set


def test_a_small_task_of_its_own_is_fine_tuned_with_eval_size_held_out():
    # was: every task held out pretraining's 1000 problems (EVAL_POOL), so a task
    # with fewer distinct prompts than that could not be fine-tuned at all
    def generate(seed, count):
        rng = np.random.default_rng(seed)
        return [Problem(f"q{rng.integers(300)}\n", "", None) for _ in range(count)]

    task = Task("small", generate, _closeness_to_m, max_new_tokens=4)
    config = FinetuneConfig(prompts_per_generation=4, train_size=64, eval_size=16)
    strategy = EggrollConfig(population=8, exclude=()).strategy()
    tuner = Finetuner(RecurrentLM(TINY), task, strategy, config)
    train = {p.prompt for p in tuner.splits.train}
    held_out = {p.prompt for p in tuner.splits.eval}
    assert len(held_out) == 16 and len(train) == 64 and not train & held_out


def _script():
    return load_script("train_countdown")


def test_train_countdown_script_outputs_and_resume(tmp_path, capsys):
    save_model(tmp_path / "model", TINY, init_params(jax.random.key(0), TINY))
    script, out = _script(), tmp_path / "run"
    common = ["--model", str(tmp_path / "model"), "--population", "4",
              "--prompts", "2", "--eval-size", "4", "--train-size", "32",
              "--skip-train", "0"]  # fmt: skip
    script.main([*common, "--out", str(out), "--generations", "2"])
    summary = json.loads((out / "summary.json").read_text())
    for key in ("env", "agent", "final_eval_return", "env_steps", "wall_time_s",
                "compile_s", "env_steps_per_s", "device", "eval_accuracy_initial",
                "final_eval_accuracy"):  # fmt: skip
        assert key in summary, key
    assert summary["agent"] == "eggroll" and summary["env"] == "llm/countdown-3"
    records = [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    train = [r for r in records if "train_return_mean" in r]
    assert [r["iteration"] for r in train] == [1, 2]
    # throughput after compilation: generation 1 compiled, so generation 2's alone
    assert summary["env_steps_per_s"] == pytest.approx(train[1]["env_steps_per_s"])
    assert all(r["env_steps"] > 0 and "wall_time_s" in r for r in train)
    assert records[0]["eval_return"] == summary["eval_accuracy_initial"]
    assert (out / "curve.png").is_file() and (out / "checkpoint.safetensors").is_file()
    assert script.main([*common, "--out", str(out), "--generations", "2"]) == 2
    err = capsys.readouterr().err  # the run is kept: resume it or --overwrite it
    assert "already holds a run" in err and "--overwrite" in err
    script.main(["--resume", str(out), "--generations", "3"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generations"] == 3
    iterations = [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").open()]
    assert 3 in iterations and iterations.count(1) == 1
    # was: a finished run resumed again logged its final evaluation a second time,
    # and --generations below the generations done ran nothing and said nothing
    metrics = (out / "metrics.jsonl").read_text()
    assert script.main(["--resume", str(out)]) == 0
    assert (out / "metrics.jsonl").read_text() == metrics
    capsys.readouterr()
    assert script.main(["--resume", str(out), "--generations", "2"]) == 2
    assert "fewer than the 3 generations" in capsys.readouterr().err
    # was: a FileExistsError traceback after loading the model
    assert script.main([*common, "--out", str(out / "summary.json")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    # was: --generations equal to the default (300) was taken as "not given"
    args = script.parse_args(["--resume", str(out), "--generations", "300"])
    assert script.resumed(out, args.generations).finetune.generations == 300
    args = script.parse_args(["--resume", str(out)])
    assert script.resumed(out, args.generations).finetune.generations == 3
    # --overwrite starts afresh: nothing of the old run's 3 generations is left
    script.main([*common, "--out", str(out), "--generations", "1", "--overwrite",
                 "--no-progress"])  # fmt: skip
    assert json.loads((out / "summary.json").read_text())["generations"] == 1
    iterations = [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").open()]
    assert iterations == [0, 1, 1]  # the initial eval, generation 1, its final eval


def test_countdown_breakdown_script_reports_both_models(tmp_path, capsys, monkeypatch):
    save_model(tmp_path / "model", TINY, init_params(jax.random.key(0), TINY))
    out = tmp_path / "run"
    _script().main(["--model", str(tmp_path / "model"), "--population", "4",
                    "--prompts", "2", "--eval-size", "4", "--train-size", "32",
                    "--skip-train", "0", "--out", str(out), "--generations", "1"])  # fmt: skip
    capsys.readouterr()
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    breakdown = load_script("countdown_breakdown")
    assert breakdown.main([str(out)]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[:2] for r in rows] == [
        ["countdown-3", "base"], ["countdown-3", "tuned"],
        ["countdown-4", "base"], ["countdown-4", "tuned"],
    ]  # fmt: skip
    assert all(r.count("%") == 3 for r in rows)
    assert breakdown.main([str(tmp_path / "missing")]) == 2
    assert "error: no checkpoint" in capsys.readouterr().err
    # the starting model moved away; was: a FileNotFoundError traceback
    (tmp_path / "model").rename(tmp_path / "moved")
    assert breakdown.main([str(out)]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option",
    [["--population", "64"], ["--time-limit", "60"], ["--out", "x"],
     ["--numbers", "3"], ["--agent", "eggroll"], ["--population", "32"]],
)  # fmt: skip
def test_train_countdown_resume_refuses_options_it_would_ignore(option, capsys):
    # was: silently ignored (the saved run's value was used), and an option given
    # with its default value (the last three) even after that: --numbers 3 continued
    # a Countdown-4 run
    with pytest.raises(SystemExit) as exit_info:
        _script().parse_args(["--resume", "run", *option])
    assert exit_info.value.code == 2
    assert f"{option[0]} cannot be used with --resume" in capsys.readouterr().err


def test_train_countdown_numbers_are_the_registered_ids(capsys):
    # was: --numbers 5 trained and reported llm/countdown-5, an id that does not exist
    with pytest.raises(SystemExit) as exit_info:
        _script().parse_args(["--out", "run", "--numbers", "5"])
    assert exit_info.value.code == 2
    assert "invalid choice: 5 (choose from 3, 4)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eval_every": -1}, "eval_every must be >= 0, got -1"),
        ({"skip_train": -5}, "skip_train must be >= 0, got -5"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32\), got -1"),
        ({"checkpoint_every": 0}, "checkpoint_every must be >= 1, got 0"),
        ({"time_limit_s": 0.0}, "time_limit_s must be > 0, got 0.0"),
    ],
)
def test_bad_finetune_config_is_a_clear_error(kwargs, message):
    # was: accepted; -5 trained on the last 5 problems, seed -1 and checkpoint_every 0
    # crashed after the initial evaluation, eval_every -1 acted as 1
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**kwargs)


def test_held_out_set_larger_than_the_pretraining_exclusion_is_refused():
    # was: accepted; with eval_size 2000, 606 of the held-out problems past the first
    # EVAL_POOL were in the pretraining corpus
    with pytest.raises(ValueError, match=f"eval_size must be <= {EVAL_POOL}"):
        FinetuneConfig(eval_size=EVAL_POOL + 1)
    assert FinetuneConfig(eval_size=EVAL_POOL).eval_size == EVAL_POOL
