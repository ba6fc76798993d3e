"""A user's journey through the benchmark's scripts: bad input, interrupts, reports."""

import json

import pytest

from esrl.bench_report import main as report

ADAPTERS = {  # what scripts/bench_adapters.py --out writes
    "device": "TFRT_CPU_0",
    "results": [{"env": "gymnax/CartPole-v1", "impl": "raw", "num_envs": 64,
                 "steps": 50, "compile_s": 1.0, "median_s": 0.1,
                 "env_steps_per_s": 32000}],
    "ratios": {"gymnax/CartPole-v1": 1.0},
}  # fmt: skip


def test_report_refuses_another_tools_rows_in_one_line(tmp_path):
    # bench_adapters' JSON has device and results too: KeyError 'kind' traceback;
    # results that are not rows: AttributeError
    path = tmp_path / "b.json"
    for doc in (ADAPTERS, {"device": "cpu", "results": [1, 2]},
                {"device": "cpu", "results": {"a": 1}}):  # fmt: skip
        path.write_text(json.dumps(doc))
        with pytest.raises(SystemExit, match="not a benchmark JSON"):
            report([str(path)])


def _benchmark(monkeypatch, interrupt_at: int | None = None):
    """scripts/benchmark.py with sections a and b of one fake case each."""
    import importlib.util
    from pathlib import Path

    from esrl.bench import Case

    path = Path(__file__).parents[1] / "scripts" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark_journey", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.ran = []

    def fake_run_case(case, methods, **_):
        if len(bench.ran) == interrupt_at:
            raise KeyboardInterrupt
        bench.ran.append(case)
        return [{"env": case.env, "kind": case.kind, "hidden": case.hidden,
                 "num_layers": case.num_layers, "horizon": case.horizon,
                 "population": case.population, "method": "plain", "rank": None,
                 "env_steps_per_s": 1.0, "ratio_to_plain": 1.0}]  # fmt: skip

    tiny = Case(hidden=8, population=8, horizon=5)
    monkeypatch.setattr(bench, "SECTIONS", {"a": [(tiny, ())], "b": [(tiny, ())]})
    monkeypatch.setattr(bench, "run_case", fake_run_case)
    monkeypatch.setattr(bench, "plot", lambda *_: None)
    return bench


def test_an_interrupted_benchmark_says_how_to_measure_the_rest(
    tmp_path, monkeypatch, capsys
):
    # Ctrl-C printed only a traceback: nothing said what the file kept or what to run
    import shlex

    out = tmp_path / "b.json"
    bench = _benchmark(monkeypatch, interrupt_at=1)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--only", "a", "b", "--repeats", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert "interrupted in section b" in err
    command = err.split("measure the rest with: ")[1].strip()
    assert command.startswith("python scripts/benchmark.py --only b --repeats 2")
    _benchmark(monkeypatch).main(shlex.split(command)[2:])
    doc = json.loads(out.read_text())
    assert [r["section"] for r in doc["results"]] == ["a", "b"]
    assert doc["repeats"] == {"a": 2, "b": 2}
    # interrupted before anything was written: the same command again, not --update
    bench = _benchmark(monkeypatch, interrupt_at=0)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--only", "a", "--out", str(tmp_path / "c.json")])
    assert "nothing written yet" in capsys.readouterr().err


def test_profile_ops_says_what_is_wrong_with_a_case(monkeypatch):
    # an odd population or an unknown env id was a ValueError / KeyError traceback
    import importlib.util
    from pathlib import Path

    from esrl.bench import Case

    path = Path(__file__).parents[1] / "scripts" / "profile_ops.py"
    spec = importlib.util.spec_from_file_location("profile_ops_journey", path)
    profile_ops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_ops)
    for case, why in (
        (Case(hidden=8, population=3, horizon=4), "eggroll: population 3 must be even"),
        (Case(env="gymnax/Nope", hidden=8, population=4, horizon=4), "plain: unknown"),
    ):
        with pytest.raises(SystemExit, match=why):
            profile_ops.profile(case, ["plain", "eggroll"], repeats=1)


def test_update_refuses_a_file_measured_with_other_xla_flags(
    tmp_path, monkeypatch, capsys
):
    # the merged file recorded this run's XLA_FLAGS for the kept rows measured
    # under other flags (the GPU sweep's depend on them)
    from esrl.bench import device_description

    bench = _benchmark(monkeypatch)
    out = tmp_path / "b.json"
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=false")
    bench.main(["--only", "a", "--out", str(out)])
    before = out.read_text()
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=true")
    with pytest.raises(SystemExit):
        bench.main(["--only", "b", "--update", "--out", str(out)])
    err = capsys.readouterr().err
    assert "XLA_FLAGS='--xla_gpu_enable_triton_gemm=false'" in err
    assert out.read_text() == before and len(bench.ran) == 1
    doc = json.loads(before)
    doc["device"] = "a GPU"  # the message said what was wrong, not what to do
    out.write_text(json.dumps(doc))
    with pytest.raises(SystemExit):
        bench.main(["--only", "b", "--update", "--out", str(out)])
    assert "rerun without --update" in capsys.readouterr().err
    assert device_description() != "a GPU" and len(bench.ran) == 1


def test_report_help_is_a_usage_not_a_missing_file(capsys):
    # `python -m esrl.bench_report --help` said "--help: no such file"
    with pytest.raises(SystemExit) as exit:
        report(["--help"])
    assert exit.value.code == 0 and "usage: python -m esrl.bench_report" in (
        capsys.readouterr().out
    )
