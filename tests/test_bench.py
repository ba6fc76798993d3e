"""The benchmark machinery on a tiny case: rows, ratios, autorange and the report."""

import argparse
import json
import time
from pathlib import Path

import pytest

from esrl.bench import (
    Bench,
    Case,
    FixedHorizon,
    Timing,
    paired_ratio,
    positive_int,
    run_case,
    time_round_robin,
)
from esrl.bench_report import main as report_main
from esrl.bench_report import plot, ratios, tables, write

TINY = Case(hidden=8, population=8, horizon=5)


@pytest.fixture(scope="module")
def rows():
    methods = (("plain", None), ("eggroll", 1), ("openai_es", None), ("nope", None))
    logged = []
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        run_case(TINY, methods, repeats=1, log=logged.append)
    assert logged == []  # refused before anything was built or compiled
    return run_case(TINY, methods[:3], repeats=2, log=lambda _: None, min_sample_s=0)


def test_rows_follow_the_contract(rows):
    assert [(r["method"], r["rank"]) for r in rows] == [
        ("plain", None), ("eggroll", 1), ("openai_es", None)
    ]  # fmt: skip
    for r in rows:
        assert r["env_steps_per_call"] == TINY.population * TINY.horizon
        assert len(r["times_s"]) == 2 and len(r["warmup_s"]) == 1
        assert r["env_steps_per_s"] == pytest.approx(
            r["env_steps_per_call"] / r["time_per_generation_s"]
        )
        assert r["ratio_to_plain"] == pytest.approx(
            r["env_steps_per_s"] / rows[0]["env_steps_per_s"]
        )
        assert r["peak_memory_mb"] > 0 and r["compile_s"] > 0
        paired = r["paired_ratio_to_plain"]
        assert (
            paired["rounds"] == 2 and paired["q1"] <= paired["median"] <= paired["q3"]
        )
    assert rows[0]["paired_ratio_to_plain"]["median"] == 1.0


def test_ratios_and_report(rows, tmp_path):
    (entry,) = ratios(rows)
    speed = {r["method"]: r["env_steps_per_s"] for r in rows}
    assert entry["eggroll_to_openai_es"] == pytest.approx(
        speed["eggroll"] / speed["openai_es"]
    )
    assert entry["eggroll_to_plain_paired"] == rows[1]["paired_ratio_to_plain"]
    path = tmp_path / "b.json"
    write(path, "cpu", rows, {"command": "test"})
    doc = json.loads(path.read_text())
    assert doc["device"] == "cpu" and len(doc["results"]) == 3
    text = tables([{**r, "section": "width"} for r in rows])
    assert "Width sweep" in text and "| mlp | 8 |" in text
    assert "Ranks" not in tables(rows)  # rows without a section land in no table
    headline = tables([{**r, "section": "headline"} for r in rows])
    assert "paired ratio (IQR)" in headline and "| 1.00 (1.00-1.00) |" in headline


def test_autorange_repeats_short_calls_and_reports_the_mean():
    calls = []

    def call():
        calls.append(1)
        return 0

    bench = Bench("plain", None, call, 1, 1, 0.0, None)
    (timing,) = time_round_robin([bench], repeats=2, min_sample_s=0.05)
    # one warm-up call, then two samples of many back-to-back calls each
    assert len(timing.times_s) == 2 and len(calls) > 3
    assert all(t < 0.05 for t in timing.times_s)


def test_xla_aot_computes_what_jit_computes():
    import jax
    import jax.numpy as jnp

    from esrl import xla

    def f(x, w, a, b):
        return jnp.tanh(x @ w + (x @ a.T) @ b)

    k = jax.random.split(jax.random.key(0), 4)
    args = [
        jax.random.normal(kk, s) for kk, s in zip(k, [(16, 8), (8, 8), (1, 8), (1, 8)])
    ]
    compiled = xla.aot(f, *args)
    assert jnp.allclose(compiled(*args), jax.jit(f)(*args), rtol=1e-5, atol=1e-6)
    static = xla.aot(lambda x, n: x * n, args[0], 3, static_argnums=1)
    assert jnp.allclose(static(args[0]), args[0] * 3)


def test_import_keeps_xla_from_triton_gemms_unless_told_otherwise():
    # jax 0.11.2's XLA aborted the process compiling esrl programs on an H100 with
    # its Triton GEMM fusion (a trainer's generation, the README example)
    import os
    import subprocess
    import sys

    from esrl.xla import avoid_triton_gemm

    for before, after in [
        ({}, "--xla_gpu_enable_triton_gemm=false"),
        ({"XLA_FLAGS": "--xla_dump_to=/tmp/d"},
         "--xla_dump_to=/tmp/d --xla_gpu_enable_triton_gemm=false"),
        ({"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true"},
         "--xla_gpu_enable_triton_gemm=true"),  # the user's choice
        ({"XLA_FLAGS": "--xla_gpu_enable_triton_gemm_any=true"},  # another flag
         "--xla_gpu_enable_triton_gemm_any=true --xla_gpu_enable_triton_gemm=false"),
    ]:  # fmt: skip
        environ = dict(before)
        avoid_triton_gemm(environ)
        assert environ == {"XLA_FLAGS": after}
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    code = (
        "import os, esrl, jax; jax.numpy.ones(2).sum(); print(os.environ['XLA_FLAGS'])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert out.strip() == "--xla_gpu_enable_triton_gemm=false"  # and the CPU accepts it


def test_xla_drops_only_the_options_this_jaxlib_does_not_know():
    # one unknown option made every executable compile with none of them
    import jax

    from esrl import xla

    tried = []

    class Lowered:
        def compile(self, options=None):
            tried.append(dict(options or {}))
            for name in options or {}:
                if name.startswith("unknown"):
                    raise jax.errors.JaxRuntimeError(
                        f"No such compile option: {name!r}"
                    )
            return "compiled"

    options = {"known": 1, "unknown_a": 2, "unknown_b": 3}
    assert xla._accepted(Lowered(), options) == {"known": 1}
    assert tried[-1] == {"known": 1}  # "known" is in "unknown_a": names match whole
    tried.clear()
    assert xla._accepted(Lowered(), {"unknown_a": 2}) == {}
    assert tried == [{"unknown_a": 2}]
    tried.clear()  # every executable compiles with what the probe accepted
    assert xla.compile_lowered(Lowered()) == "compiled"
    assert tried == [xla.compiler_options()]


def test_fixed_horizon_never_ends_and_forwards_the_rest():
    import jax
    import jax.numpy as jnp

    import esrl

    env = esrl.make("gymnax/CartPole-v1")
    fixed = FixedHorizon(env)
    assert fixed.unwrapped is env.unwrapped and "CartPole" in fixed.name
    assert fixed.action_space().n == env.action_space().n
    key = jax.random.key(0)
    _, state = fixed.reset(key)
    inner_state, ended = state, False
    for _ in range(30):  # pushing left the whole time topples the pole
        _, state, _, term, trunc, _ = fixed.step(key, state, jnp.int32(0))
        _, inner_state, _, t, _, _ = env.step(key, inner_state, jnp.int32(0))
        assert not term and not trunc
        ended |= bool(t)
    assert ended


def test_heavy_benches_are_timed_after_the_others():
    order = []

    def bench(name: str, seconds: float) -> Bench:
        def call():
            order.append(name)
            time.sleep(seconds)
            return 0

        return Bench(name, None, call, 1, 1, 0.0, None)

    benches = [bench("plain", 0.001), bench("openai_es", 0.05), bench("eggroll", 0.001)]
    timings = time_round_robin(benches, repeats=2, heavy_ratio=5.0)
    # warm-up round, one dropped round of the light ones, their rounds (every other one
    # reversed), then the heavy one
    assert order == (
        ["plain", "openai_es", "eggroll"]
        + ["plain", "eggroll"] * 2
        + ["eggroll", "plain"]
        + ["openai_es"] * 2
    )
    assert [len(t.times_s) for t in timings] == [2, 2, 2]
    assert [t.heavy for t in timings] == [False, True, False]
    assert [len(t.warmup_s) for t in timings] == [2, 1, 2]
    order.clear()
    time_round_robin(benches, repeats=1)  # no heavy_ratio: one round-robin
    assert order == ["plain", "openai_es", "eggroll"] * 2


def test_paired_ratio_is_taken_round_by_round():
    def timing(times, heavy=False):
        return Timing(times, times, [1.0], 1.0, "host_rss", heavy)

    plain = timing([1.0, 3.0, 2.0])
    # the machine slowed down in round 2; round by round the bench is 10% slower,
    # which the ratio of medians (2.0 / 1.8 = 1.11) does not show
    paired = paired_ratio(plain, timing([1.1, 3.3, 1.8]))
    assert paired["rounds"] == 3
    assert paired["median"] == pytest.approx(1 / 1.1)
    assert paired["q1"] == pytest.approx(1 / 1.1)
    assert paired["q3"] == pytest.approx((1 / 1.1 + 2 / 1.8) / 2)
    assert paired_ratio(plain, timing([1.0, 3.0, 2.0], heavy=True)) is None
    assert paired_ratio(plain, timing([1.0, 3.0])) is None  # not the same rounds
    one = paired_ratio(timing([2.0]), timing([4.0]))
    assert (one["q1"], one["median"], one["q3"]) == (0.5, 0.5, 0.5)
    # a bench doing 3x the env steps per call in twice the time is 1.5x as fast
    assert paired_ratio(timing([2.0]), timing([4.0]), work=3.0)["median"] == 1.5


def test_positive_int_rejects_what_is_not_a_count():
    assert positive_int("3") == 3
    for text in ("0", "-2", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"got '{text}'"):
            positive_int(text)


def test_run_case_without_plain_reports_no_ratio():
    # the log line formatted the missing ratio to plain and crashed after the timing
    logged = []
    (row,) = run_case(
        TINY, (("eggroll", 1),), repeats=2, log=logged.append, min_sample_s=0
    )
    assert row["ratio_to_plain"] is None and row["paired_ratio_to_plain"] is None
    assert row["env_steps_per_s"] > 0 and "ratio -" in logged[-1]


def test_round_robin_needs_a_warmup_and_a_repeat():
    # warmup=0 was an IndexError (the warm-up call sizes samples and finds heavy
    # benches); repeats=0 a StatisticsError once every method had compiled
    bench = Bench("plain", None, lambda: 0, 1, 1, 0.0, None)
    for kwargs in ({"repeats": 2, "warmup": 0}, {"repeats": 0}):
        with pytest.raises(ValueError, match="must be >= 1"):
            time_round_robin([bench], **kwargs)
    logged = []
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        run_case(TINY, (("plain", None),), repeats=0, log=logged.append)
    assert logged == []  # refused before anything compiled


def test_benchmark_sections_run_once_and_quick_excludes_only(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark_script", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ran = []

    def fake_run_case(case, methods, **_):
        ran.append(case)
        return [{"env": case.env, "kind": case.kind, "hidden": case.hidden,
                 "num_layers": case.num_layers, "horizon": case.horizon,
                 "population": case.population, "method": "plain", "rank": None,
                 "env_steps_per_s": 1.0, "ratio_to_plain": 1.0}]  # fmt: skip

    monkeypatch.setattr(bench, "SECTIONS", {"a": [(TINY, ())], "b": [(TINY, ())]})
    monkeypatch.setattr(bench, "run_case", fake_run_case)
    monkeypatch.setattr(bench, "plot", lambda *_: None)
    out = tmp_path / "b.json"
    # the GPU sweep needs an XLA flag (README), which the JSON now records
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=false")
    # a section named twice ran twice and wrote its rows twice
    bench.main(["--only", "a", "b", "a", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert [r["section"] for r in doc["results"]] == ["a", "b"] and len(ran) == 2
    assert doc["sections"] == ["a", "b"]
    assert doc["xla_flags"] == "--xla_gpu_enable_triton_gemm=false"
    assert doc["command"].endswith(f"benchmark.py --only a b a --out {out}")
    with pytest.raises(SystemExit):  # --quick silently ignored --only
        bench.main(["--quick", "--only", "b", "--out", str(out)])
    # without --out a quick run must not replace the committed full results
    monkeypatch.setitem(bench.SECTIONS, "quick", [(TINY, ())])
    monkeypatch.chdir(tmp_path)
    bench.main(["--quick"])
    assert (tmp_path / "runs" / "benchmark_quick.json").exists()
    assert not (tmp_path / "docs").exists()
    bench.main(["--quick", "--update", "--out", str(out)])  # into the full file
    doc = json.loads(out.read_text())
    assert doc["sections"] == ["a", "b", "quick"] and doc["quick"] is False


def test_tables_show_rows_of_any_section_and_why_methods_were_skipped(rows):
    # rows without a section (an older benchmark's): the report printed nothing
    text = tables(rows)
    assert "| gymnax/CartPole-v1 | MLP 8x2 | 8 | 5 | eggroll r1 |" in text
    assert text.count("\n| gymnax/CartPole-v1 |") == 3
    skipped = {**rows[0], "method": "openai_es", "skipped": True, "note": "too big"}
    skipped.update(env_steps_per_s=None, ratio_to_plain=None, section="width")
    text = tables([{**r, "section": "width"} for r in rows[:2]] + [skipped])
    assert (
        "Skipped: openai_es (width: gymnax/CartPole-v1, MLP 8x2, population 8, " in text
    )
    assert "too big" in text


def test_plain_rolls_out_in_the_blocks_the_es_methods_use(monkeypatch):
    # on a CPU the trainer rolls out blocks of CPU_BLOCK members; plain, the ceiling,
    # ran the whole population in one block, so above 2048 members it was not the
    # same rollout as the one EGGROLL and OpenAI-ES were compared to
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("blocks are the CPU's; a GPU rolls out the whole share at once")

    from esrl import bench_methods, train
    from esrl.bench import env_for
    from esrl.policy import make_policy
    from esrl.rollout import evaluate_population

    monkeypatch.setattr(train, "CPU_BLOCK", 4)
    key = jax.random.key(0)
    plain = bench_methods.build_plain(TINY, key)
    es = bench_methods.build_es(TINY, key, "eggroll")
    assert plain.note == es.note == "rolled out in blocks of 4"
    env = env_for(TINY)
    policy = make_policy(bench_methods._spec(TINY), env.action_space())
    obs, _ = env.reset(key)
    params = policy.init(key, policy.initial_carry(), obs)["params"]
    whole = evaluate_population(
        key, env, env.default_params, policy, params, None,
        bench_methods._rollout(TINY), num_members=TINY.population,
    ).returns  # fmt: skip
    assert jax.numpy.allclose(plain.call(), whole)


def _benchmark_script(monkeypatch, interrupt_at: int | None = None):
    """scripts/benchmark.py with two tiny sections and a run_case that records calls
    (and raises KeyboardInterrupt at call ``interrupt_at``)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("benchmark_script", path)
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

    monkeypatch.setattr(bench, "SECTIONS", {"a": [(TINY, ())], "b": [(TINY, ())]})
    monkeypatch.setattr(bench, "run_case", fake_run_case)
    monkeypatch.setattr(bench, "plot", lambda *_: None)
    return bench


def test_benchmark_refuses_an_out_it_cannot_write_before_measuring(
    tmp_path, monkeypatch, capsys
):
    # a directory or a path below a file failed once the first case was measured;
    # --out x.png had its JSON overwritten by the plot
    bench = _benchmark_script(monkeypatch)
    (tmp_path / "file").write_text("x")
    for out, why in (
        (tmp_path, "is a directory"),
        (tmp_path / "file" / "b.json", "cannot write there"),
        (tmp_path / "b.png", "the plot goes next to the JSON"),
    ):
        with pytest.raises(SystemExit):
            bench.main(["--only", "a", "--out", str(out)])
        assert why in capsys.readouterr().err
    assert bench.ran == [] and not (tmp_path / "b.png").exists()
    bench.main(["--only", "a", "--out", str(tmp_path / "new" / "dir" / "b.json")])
    assert (tmp_path / "new" / "dir" / "b.json").is_file()


def test_benchmark_update_refuses_a_file_it_cannot_merge(tmp_path, monkeypatch, capsys):
    # a corrupt file, another JSON or rows without a section were tracebacks
    # (JSONDecodeError, TypeError, KeyError 'section')
    from esrl.bench import device_description

    bench = _benchmark_script(monkeypatch)
    out, device = tmp_path / "b.json", device_description()
    row = {"env": TINY.env, "kind": "mlp", "hidden": 8, "num_layers": 2, "horizon": 5,
           "population": 8, "method": "plain", "rank": None, "env_steps_per_s": 2.0,
           "ratio_to_plain": 1.0}  # fmt: skip
    for text, why in (
        ('{"device": "cpu", "results": [', "not readable as JSON"),
        ("[]", "not a benchmark JSON"),
        (json.dumps({"device": "a GPU", "results": []}), "was measured on a GPU"),
        (json.dumps({"device": device, "results": [row]}), "rows without a section"),
    ):
        out.write_text(text)
        with pytest.raises(SystemExit):
            bench.main(["--only", "b", "--update", "--out", str(out)])
        assert why in capsys.readouterr().err and out.read_text() == text
    assert bench.ran == []
    # a file with sectioned rows but no run metadata merges: it is inferred
    out.write_text(json.dumps({"device": device, "results": [{**row, "section": "a"}]}))
    bench.main(["--only", "b", "--update", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert [(r["section"], r["env_steps_per_s"]) for r in doc["results"]] == [
        ("a", 2.0), ("b", 1.0)
    ]  # fmt: skip
    assert doc["sections"] == ["a", "b"] and doc["repeats"] == {"b": 5}
    assert doc["command"].endswith("--only b --update --out " + str(out))
    assert " && " not in doc["command"]


def test_report_write_leaves_the_previous_file_when_it_fails(tmp_path, monkeypatch):
    # the JSON was written in place: a full disk (or a kill) part way truncated the
    # file, and with --update the other sections' rows were lost
    from pathlib import Path

    path = tmp_path / "b.json"
    rows = [{"method": "plain", "skipped": True}]
    write(path, "cpu", rows, {"command": "first"})
    before = path.read_text()
    real = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space"):
        write(path, "cpu", rows * 50, {"command": "second"})
    monkeypatch.undo()
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == [
        "b.json"
    ]


def test_plot_without_plain_and_of_several_envs(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    def row(method, env="gymnax/CartPole-v1", kind="mlp", hidden=256, ratio=1.0,
            section="envs"):  # fmt: skip
        return {"env": env, "kind": kind, "hidden": hidden, "num_layers": 2,
                "horizon": 100, "population": 256, "method": method,
                "rank": 1 if method == "eggroll" else None, "env_steps_per_s": 10.0,
                "ratio_to_plain": ratio, "section": section}  # fmt: skip

    monkeypatch.setattr(plt, "close", lambda fig: None)
    # GRU plain was skipped: its eggroll line (ratios None) was drawn empty, and a
    # sweep with no plain at all crashed the log-scaled plot after the whole run
    gru = [row("eggroll", kind="gru", hidden=h, ratio=None, section="width")
           for h in (64, 128)]  # fmt: skip
    plot(tmp_path / "none.png", "cpu", gru)  # no ratio to plot: bars of steps/s
    mlp = [row(m, hidden=h, ratio=r, section="width")
           for m, r in (("plain", 1.0), ("eggroll", 0.9)) for h in (64, 128)]  # fmt: skip
    plot(tmp_path / "w.png", "cpu", mlp + gru)
    (ax,) = plt.gcf().axes
    assert [line.get_label() for line in ax.lines] == ["plain (mlp)", "eggroll (mlp)"]
    # the envs section's bars were all labelled 'mlp 256 plain' / 'mlp 256 eggroll'
    envs = [row(m, env) for env in ("gymnax/Breakout-MinAtar", "brax/ant")
            for m in ("plain", "eggroll")]  # fmt: skip
    plot(tmp_path / "e.png", "cpu", envs)
    (ax,) = plt.gcf().axes
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "Breakout-MinAtar mlp 256 plain"
    assert len(set(labels)) == 4
    plt.close("all")


def test_report_cli_says_what_is_wrong_with_a_file(tmp_path, capsys):
    # a truncated or foreign JSON was a JSONDecodeError / KeyError traceback
    from esrl.bench_report import main

    path = tmp_path / "b.json"
    for text, why in (
        ('{"device": "cpu", "results": [', "not readable as JSON"),
        ('{"env": "gymnax/CartPole-v1", "agent": "eggroll"}', "not a benchmark JSON"),
    ):
        path.write_text(text)
        with pytest.raises(SystemExit, match=why):
            main([str(path)])
    path.write_text(json.dumps({"device": "cpu", "results": []}))
    main([str(path)])
    assert capsys.readouterr().out.startswith("cpu\n")


def test_benchmark_interrupted_file_names_only_the_sections_it_holds(
    tmp_path, monkeypatch
):
    # an interrupted run's file listed every section it was going to run
    bench = _benchmark_script(monkeypatch)
    fake = bench.run_case

    def interrupted(case, methods, **kw):  # Ctrl-C during section b
        if len(bench.ran) == 1:
            raise KeyboardInterrupt
        return fake(case, methods, **kw)

    monkeypatch.setattr(bench, "run_case", interrupted)
    out = tmp_path / "b.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--only", "a", "b", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert [r["section"] for r in doc["results"]] == ["a"]
    assert doc["sections"] == ["a"] and doc["repeats"] == {"a": 5}
    monkeypatch.setattr(bench, "run_case", fake)
    bench.main(["--only", "b", "--update", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["sections"] == ["a", "b"] and doc["repeats"] == {"a": 5, "b": 5}


def test_tables_keep_quick_rows_apart_from_the_headline(rows):
    # --quick --update into a full file: both sections' rows landed in one table,
    # two 'plain' rows of the same policy with nothing to tell them apart
    text = tables([{**r, "section": s} for s in ("headline", "quick") for r in rows])
    headline, quick = text.split("(--quick):")
    assert headline.count("| MLP 8x2 | plain |") == 1
    assert quick.count("| MLP 8x2 | plain |") == 1


def test_evosax_missing_or_another_version_is_a_skipped_row(monkeypatch):
    # evosax 0.2 (no evosax.algorithms) was reported as 'evosax not installed'
    import sys

    import jax

    from esrl.bench_methods import build_evosax

    monkeypatch.setitem(sys.modules, "evosax.algorithms", None)
    skipped = build_evosax(TINY, jax.random.key(0))
    assert skipped.method == "evosax_open_es"
    assert "evosax 0.3 not importable" in skipped.note
    assert "evosax.algorithms" in skipped.note and "esrl[bench]" in skipped.note
    monkeypatch.setitem(sys.modules, "evosax", None)
    assert "esrl[bench]" in build_evosax(TINY, jax.random.key(0)).note


def _bench_adapters(monkeypatch):
    """scripts/bench_adapters.py as a module whose measuring is recorded, not run."""
    import importlib.util
    import sys

    path = Path(__file__).parents[1] / "scripts" / "bench_adapters.py"
    spec = importlib.util.spec_from_file_location("bench_adapters_script", path)
    adapters = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, adapters)  # for its dataclass
    spec.loader.exec_module(adapters)
    measured = []
    monkeypatch.setattr(adapters, "measure", lambda *a: measured.append(a) or [])
    return adapters, measured


def test_bench_adapters_refuses_an_out_it_cannot_write_before_measuring(
    tmp_path, monkeypatch, capsys
):
    # --out in a missing directory (or a directory) failed after minutes of measuring
    adapters, measured = _bench_adapters(monkeypatch)
    for out, why in (
        (tmp_path / "missing" / "a.json", "cannot write there"),
        (tmp_path, "is a directory"),
    ):
        with pytest.raises(SystemExit):
            adapters.main(["--quick", "--out", str(out)])
        assert f"--out {out}: {why}" in capsys.readouterr().err
    assert measured == []


def test_tables_read_contract_rows_without_timing_detail():
    # rows with the contract keys and the case but no time per generation (those of
    # esrl.envs.llm.bench.generation_benchmark) were a KeyError in the report
    rows = [
        {"env": "llm/countdown-3", "kind": "mingru", "hidden": 64, "num_layers": 2,
         "horizon": 3, "method": m, "population": 4, "rank": rank,
         "env_steps_per_s": speed, "ratio_to_plain": speed / 20.0}
        for m, rank, speed in (("plain", None, 20.0), ("eggroll", 1, 10.0))
    ]  # fmt: skip
    text = tables(rows)
    line = "| llm/countdown-3 | MINGRU 64 | 4 | 3 | eggroll r1 | 10.00 | - | 0.50 |"
    assert line in text


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_unwritable_says_why_no_file_can_be_written_there(tmp_path):
    # scripts check --out with it before minutes of measuring
    from esrl.bench import unwritable

    (tmp_path / "file").write_text("x")
    assert unwritable(tmp_path / "b.json") is None
    assert "is a directory" in unwritable(tmp_path)
    cannot = ("file", "missing")  # below a file, in a missing directory, in /proc
    for out in [tmp_path / d / "b.json" for d in cannot] + [Path("/proc/b.json")]:
        assert "cannot write there" in unwritable(out)
    assert not (tmp_path / "missing").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_bench_adapters_refuses_a_directory_it_cannot_write_in(monkeypatch, capsys):
    # its own check let an existing directory that takes no files through (even root
    # cannot create one in /proc): the JSON failed after minutes of measuring
    adapters, measured = _bench_adapters(monkeypatch)
    with pytest.raises(SystemExit):
        adapters.main(["--quick", "--out", "/proc/a.json"])
    assert measured == [] and "cannot write there" in capsys.readouterr().err


def test_xla_jit_compiles_with_the_options_this_jaxlib_knows(monkeypatch):
    # generation (esrl.envs.llm.generate) compiled with XLA's defaults: EGGROLL ran
    # at ~0.77 of plain's tokens/s there, ~0.97 with these options
    import jax

    from esrl import xla

    real, seen = jax.jit, []
    monkeypatch.setattr(jax, "jit", lambda fn, **kw: seen.append(kw) or real(fn, **kw))
    double = xla.jit(lambda x, n: x * n, static_argnames="n")
    assert seen == []  # nothing is asked of the backend before the first call
    assert double(3.0, n=2) == 6.0 and double(1.0, n=5) == 5.0
    options = seen[-1]["compiler_options"]
    assert seen[-1]["static_argnames"] == "n"
    want = xla.CPU_OPTIONS if jax.default_backend() == "cpu" else {}
    assert options == xla.compiler_options() == want  # this jaxlib knows them all
    # inside another jit: a nested jit (XLA takes options only for the outer program)
    assert jax.jit(lambda x: double(x, n=3))(2.0) == 6.0
    assert "compiler_options" not in seen[-1]


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
            report_main([str(path)])


def test_an_interrupted_benchmark_says_how_to_measure_the_rest(
    tmp_path, monkeypatch, capsys
):
    # Ctrl-C printed only a traceback: nothing said what the file kept or what to run
    import shlex

    out = tmp_path / "b.json"
    bench = _benchmark_script(monkeypatch, interrupt_at=1)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--only", "a", "b", "--repeats", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert "interrupted in section b" in err
    command = err.split("measure the rest with: ")[1].strip()
    assert command.startswith("python scripts/benchmark.py --only b --repeats 2")
    _benchmark_script(monkeypatch).main(shlex.split(command)[2:])
    doc = json.loads(out.read_text())
    assert [r["section"] for r in doc["results"]] == ["a", "b"]
    assert doc["repeats"] == {"a": 2, "b": 2}
    # interrupted before anything was written: the same command again, not --update
    bench = _benchmark_script(monkeypatch, interrupt_at=0)
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

    bench = _benchmark_script(monkeypatch)
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
        report_main(["--help"])
    assert exit.value.code == 0 and "usage: python -m esrl.bench_report" in (
        capsys.readouterr().out
    )
