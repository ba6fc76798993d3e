"""Where a generation's time goes, per XLA op: plain inference against EGGROLL (CPU).

    python scripts/profile_ops.py                     # CartPole, MLP 256x2, pop 2048, 500 steps
    python scripts/profile_ops.py --kind gru --methods plain eggroll

Each method is built as in `scripts/benchmark.py` (the same executables, compiled with
XLA's per-op trace events on), warmed up, then profiled for ``--repeats`` generations,
one of each method per round. Every op's time is attributed to the code that produced
it through its HLO metadata and summed into groups: the policy's matmuls, its low-rank
row reductions ``x @ a.T``, its elementwise work (bias, noise, activations), the
environment and rollout, and, once per generation, the noise draws and the update.
Prints a table of milliseconds per generation (median over repeats) and the difference
to the first method. The tracing itself slows every op a little.
"""

from __future__ import annotations

import argparse
import glob
import re
import statistics
import tempfile
from collections import Counter

import jax

from esrl import xla
from esrl.bench import Case, Skipped, build, positive_int

GROUPS = (
    "policy matmuls x @ W",
    "policy low-rank reductions x @ a.T",
    "policy elementwise (bias, noise, activation)",
    "env step and rollout",
    "noise draw (once per generation)",
    "estimate, update, other (once per generation)",
)
CONTROL_FLOW = ("while", "conditional", "call")
TRACE_OPTION = "xla_cpu_enable_xprof_traceme"
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*)$", re.MULTILINE)
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def group_of(op_name: str) -> str:
    """The `GROUPS` entry of an op, from the ``op_name`` of its HLO metadata."""
    if re.search(r"\(Policy\)+/", op_name):  # vmap(vmap(Policy))/actor_1/dot_general
        leaf = op_name.rsplit("/", 1)[-1]
        if leaf == "dot_general":
            return GROUPS[0]
        return GROUPS[1] if leaf == "reduce_sum" else GROUPS[2]
    if "evaluate_population)/while/body" in op_name:
        return GROUPS[3]
    if "_normal" in op_name or "_uniform" in op_name:
        return GROUPS[4]
    return GROUPS[5]


def op_groups(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> group, for every instruction that may run as one op."""
    out = {}
    for m in _INSTRUCTION.finditer(hlo_text):
        name, op_name = m.group(1), _OP_NAME.search(m.group(2))
        op_name = op_name.group(1) if op_name else ""
        if not name.startswith(CONTROL_FLOW):  # their events contain their bodies'
            out[name] = group_of(op_name)
    return out


def profile_once(call, groups: dict[str, str]) -> Counter:
    """Milliseconds per group of one call, from a jax.profiler trace."""
    jax.block_until_ready(call())  # not the first call of the round in the trace
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            jax.block_until_ready(call())
        (path,) = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    ms = Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in groups:
                    ms[groups[event.name]] += event.duration_ns / 1e6
    return ms


def profile(
    case: Case, methods: list[str], repeats: int
) -> dict[str, dict[str, float]]:
    """Median milliseconds per group and generation of each method on ``case``."""
    key = jax.random.PRNGKey(0)
    built = {}
    xla.CPU_OPTIONS[TRACE_OPTION] = True  # per-op trace events, for these compiles only
    try:
        for method in methods:
            try:
                b = build(method, None, case, key)
            except (KeyError, ValueError) as err:  # an unknown env, an odd population
                raise SystemExit(
                    f"{method}: {err.args[0] if err.args else err}"
                ) from None
            if isinstance(b, Skipped):
                raise SystemExit(f"{method} skipped: {b.note}")
            built[method] = (b.call, op_groups(b.executable.as_text()))
    finally:
        xla.CPU_OPTIONS.pop(TRACE_OPTION)
    samples = {m: [] for m in methods}
    for _ in range(repeats):
        for method, (call, groups) in built.items():
            samples[method].append(profile_once(call, groups))
    return {
        m: {g: statistics.median(s[g] for s in runs) for g in GROUPS}
        for m, runs in samples.items()
    }


def table(ms: dict[str, dict[str, float]]) -> str:
    """Markdown table: ms per generation of every group and method, and the difference."""
    methods = list(ms)
    base = methods[0]
    head = ["op group"] + [f"{m} ms" for m in methods]
    head += [f"{m} - {base}" for m in methods[1:]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = {m: sum(ms[m].values()) for m in methods}
    for g in (*GROUPS, "total"):
        vals = totals if g == "total" else {m: ms[m][g] for m in methods}
        cells = [g] + [f"{vals[m]:.1f}" for m in methods]
        cells += [f"{vals[m] - vals[base]:+.1f}" for m in methods[1:]]
        rows.append("| " + " | ".join(cells) + " |")
    ratios = ", ".join(f"{m} {totals[base] / totals[m]:.3f}" for m in methods[1:])
    return "\n".join(rows) + f"\n\nop time of {base} / op time of: {ratios}"


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, profile, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default=Case.env)
    parser.add_argument(
        "--kind", default=Case.kind, choices=("mlp", "gru", "mingru", "lstm")
    )
    parser.add_argument("--hidden", type=positive_int, default=Case.hidden)
    parser.add_argument("--population", type=positive_int, default=Case.population)
    parser.add_argument("--horizon", type=positive_int, default=Case.horizon)
    parser.add_argument(
        "--methods", nargs="+", default=["plain", "eggroll"],
        choices=("plain", "eggroll", "openai_es"),
        help="the first is the baseline of the differences",
    )  # fmt: skip
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="profiled generations"
    )
    args = parser.parse_args(argv)
    if jax.default_backend() != "cpu":
        raise SystemExit("per-op profiles read XLA:CPU trace events; run on the CPU")
    case = Case(args.env, args.kind, args.hidden, args.population, args.horizon)
    print(f"{case}, {args.repeats} profiled generations per method\n")
    print(table(profile(case, args.methods, args.repeats)))


if __name__ == "__main__":
    main()
