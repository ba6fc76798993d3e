"""The README's Python examples run as written (training: two generations, not 20)."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _first_python_block(after: str) -> str:
    section = README.read_text().split(after, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_environment_example_runs():
    scope: dict = {}
    exec(_first_python_block("## Environments"), scope)  # noqa: S102 - our own README
    assert (
        scope["terminated"].shape == ()
        and "gymnax/CartPole-v1" in scope["esrl"].list_envs()
    )


def test_readme_python_example_runs():
    code = _first_python_block("### In Python")
    assert "range(20)" in code
    scope: dict = {}
    exec(code.replace("range(20)", "range(2)"), scope)  # noqa: S102 - our own README
    assert int(scope["state"].generation) == 2
    assert np.isfinite(float(scope["metrics"]["fitness_mean"]))


def test_readme_run_example_runs(tmp_path, monkeypatch):
    from esrl.agents.ppo import PPOConfig

    code = _first_python_block("### Runs from Python")
    small = {  # a tiny run of each
        "population=256": "population=8",
        "generations=30": "generations=2",
        "total_steps=200_000": f"total_steps={PPOConfig().batch_size}",
    }
    for text, tiny in small.items():
        assert text in code
        code = code.replace(text, tiny)
    monkeypatch.chdir(tmp_path)
    exec(code, {})  # noqa: S102 - our own README
    for run in ("py_es", "py_ppo"):
        assert (tmp_path / "runs" / run / "summary.json").is_file()
