"""Benchmark reports: method-to-method ratios, the JSON file and ``benchmark.png``."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

CASE_KEYS = ("env", "kind", "hidden", "num_layers", "horizon")
SECTIONS = ("quick", "headline", "width", "population", "rank", "envs")
"""The sections of `scripts/benchmark.py` that `tables` gives a table of their own."""
ROW_KEYS = CASE_KEYS + (
    "method",
    "population",
    "rank",
    "env_steps_per_s",
    "ratio_to_plain",
)
"""What every row has (skipped ones too): the keys the tables read."""


def _case(row: dict) -> tuple:
    return tuple(row[k] for k in CASE_KEYS)


def ratios(rows: list[dict]) -> list[dict]:
    """Per case: eggroll (each rank) / openai_es, / evosax_open_es and / plain.

    ``eggroll_to_plain_paired``: the quartiles of the per-round ratios (see
    `esrl.bench.paired_ratio`), where the run has them.
    """
    by_case: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if not r.get("skipped"):
            by_case[_case(r) + (r["population"], r.get("section"))].append(r)
    out = []
    for key, group in by_case.items():
        case = dict(zip(CASE_KEYS + ("population", "section"), key))
        speed = {(r["method"], r["rank"]): r["env_steps_per_s"] for r in group}
        for r in group:
            if r["method"] != "eggroll":
                continue
            entry = {**case, "rank": r["rank"]}
            for peer in ("plain", "openai_es", "evosax_open_es"):
                if (peer, None) in speed:
                    peer_speed = speed[(peer, None)]
                    entry[f"eggroll_to_{peer}"] = r["env_steps_per_s"] / peer_speed
            if r.get("paired_ratio_to_plain"):
                entry["eggroll_to_plain_paired"] = r["paired_ratio_to_plain"]
            out.append(entry)
    return out


def write(path: str | Path, device: str, rows: list[dict], meta: dict) -> None:
    """Write the benchmark JSON: ``device``, ``results`` rows, ratios, run metadata.

    Through a temporary file: a kill or a full disk part way leaves the previous file
    (an --update's other sections) as it was.
    """
    from esrl.logger import write_json_atomic

    doc = {"device": device, **meta, "results": rows, "ratios": ratios(rows)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(path), doc)


def _series(rows: list[dict], x: str, y: str, fixed: dict) -> dict[str, list[tuple]]:
    """(x, y) points per method label among rows matching ``fixed`` that have a y."""
    lines: dict[str, list[tuple]] = defaultdict(list)
    for r in rows:
        if r.get(y) is None or any(r.get(k) != v for k, v in fixed.items()):
            continue  # skipped, or no plain to take a ratio to
        label = r["method"] + (f" r{r['rank']}" if r["rank"] not in (None, 1) else "")
        lines[f"{label} ({r['kind']})"].append((r[x], r[y]))
    return {k: sorted(set(v)) for k, v in lines.items() if len({p[0] for p in v}) > 1}


def plot(path: str | Path, device: str, rows: list[dict]) -> None:
    """Ratio to plain vs width and steps/s vs population (bars if there are no sweeps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = _series(rows, "hidden", "ratio_to_plain", {"section": "width"})
    pops = _series(rows, "population", "env_steps_per_s", {"section": "population"})
    pops = {k: v for k, v in pops.items() if not k.startswith("ppo")}
    panels = [p for p in (widths, pops) if p] or [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, panel in zip(axes, panels):
        if panel is widths and widths:
            for label, pts in widths.items():
                ax.plot(*zip(*pts), "o-", label=label)
            ax.set(xscale="log", yscale="log", xlabel="hidden width",
                   ylabel="env steps/s relative to plain",
                   title="CartPole, population 512: ratio to plain vs width")  # fmt: skip
        elif panel is pops and pops:
            for label, pts in pops.items():
                ax.plot(*zip(*pts), "o-", label=label)
            ax.set(xscale="log", yscale="log", xlabel="population",
                   ylabel="env steps/s", title="CartPole, hidden 256: steps/s vs population")  # fmt: skip
        else:
            _bars(ax, rows)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(device, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bars(ax, rows: list[dict]) -> None:
    """Steps/s per method for each case (a run without sweeps)."""
    done = [r for r in rows if not r.get("skipped")]
    # name what tells the cases apart (the envs section: three envs, all MLP 256)
    varies = [k for k in ("env", "population") if len({r[k] for r in done}) > 1]
    labels = [
        " ".join([str(r[k]).rsplit("/", 1)[-1] for k in varies] + [r["kind"]])
        + f" {r['hidden']} {_label(r)}"
        for r in done
    ]
    ax.bar(range(len(done)), [r["env_steps_per_s"] for r in done], label="env steps/s")
    ax.set_xticks(range(len(done)), labels, rotation=70, fontsize=7)
    ax.set(yscale="log", ylabel="env steps/s", title="steps/s per method (one run)")


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.{digits}f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    return f"{x:.{digits}f}" if x < 100 else f"{x:,.0f}"


def _policy(r: dict) -> str:
    if r["kind"] == "mlp":
        return f"MLP {r['hidden']}x{r['num_layers']}"
    return f"{r['kind'].upper()} {r['hidden']}"


def _label(r: dict) -> str:
    return r["method"] + ("" if r["rank"] is None else f" r{r['rank']}")


def _paired(r: dict) -> str:
    p = r.get("paired_ratio_to_plain")
    return f"{p['median']:.2f} ({p['q1']:.2f}-{p['q3']:.2f})" if p else "-"


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(cells) + " |" for cells in lines])


def tables(rows: list[dict]) -> str:
    """Markdown tables of a benchmark JSON's rows, one per section of `scripts/benchmark.py`
    (what the README's Benchmark shows), one of any other rows, and skipped methods."""
    by_section: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if not r.get("skipped"):
            by_section[r.get("section")].append(r)
    parts = []
    for section in ("headline", "quick"):  # a --quick --update file may hold both
        if not by_section[section]:
            continue
        title = "CartPole, population 2048, hidden 256, 500 steps"
        title += " (--quick)" if section == "quick" else ""
        parts.append(f"{title}:\n\n" + _table(
            ["policy", "method", "env steps/s", "s / gen", "ratio to plain",
             "paired ratio (IQR)", "compile s", "peak MB"],
            [[_policy(r), _label(r), _fmt(r["env_steps_per_s"]),
              _fmt(r["time_per_generation_s"]), _fmt(r["ratio_to_plain"]),
              _paired(r), _fmt(r["compile_s"], 1), f"{r['peak_memory_mb']:.0f}"]
             for r in by_section[section]],
        ))  # fmt: skip
    parts.append(_peer_table(
        "Width sweep (CartPole, population 512, 100 steps)", "hidden", by_section["width"]
    ))  # fmt: skip
    parts.append(_peer_table(
        "Population sweep (CartPole, MLP 256x2, 200 steps)", "population",
        by_section["population"],
    ))  # fmt: skip
    if by_section["rank"]:
        parts.append("Ranks (CartPole, population 2048, MLP 256x2, 500 steps):\n\n" + _table(
            ["method", "env steps/s", "s / gen", "ratio to plain", "note"],
            [[_label(r), _fmt(r["env_steps_per_s"]), _fmt(r["time_per_generation_s"]),
              _fmt(r["ratio_to_plain"]), r["note"]] for r in by_section["rank"]],
        ))  # fmt: skip
    if by_section["envs"]:
        parts.append("Other environments:\n\n" + _table(
            ["env", "population", "method", "env steps/s", "s / gen", "ratio to plain"],
            [[r["env"], str(r["population"]), _label(r), _fmt(r["env_steps_per_s"]),
              _fmt(r["time_per_generation_s"]), _fmt(r["ratio_to_plain"])]
             for r in by_section["envs"]],
        ))  # fmt: skip
    other = [r for s, rs in by_section.items() if s not in SECTIONS for r in rs]
    if other:  # e.g. an older benchmark's rows, which have no section
        parts.append("Other cases:\n\n" + _table(
            ["env", "policy", "population", "steps", "method", "env steps/s", "s / gen",
             "ratio to plain", "paired ratio (IQR)"],
            [[r["env"], _policy(r), str(r["population"]), str(r["horizon"]), _label(r),
              _fmt(r["env_steps_per_s"]), _fmt(r.get("time_per_generation_s"), 4),
              _fmt(r["ratio_to_plain"]), _paired(r)] for r in other],
        ))  # fmt: skip
    parts.append("\n".join(
        f"Skipped: {r['method']} ({_where(r)}): {r.get('note', '')}"
        for r in rows if r.get("skipped")
    ))  # fmt: skip
    return "\n\n".join(p for p in parts if p) + "\n"


def _where(r: dict) -> str:
    """The case of a row, in words (and its section, where it has one)."""
    case = (
        f"{r['env']}, {_policy(r)}, population {r['population']}, {r['horizon']} steps"
    )
    return f"{r['section']}: {case}" if r.get("section") else case


def _peer_table(title: str, x: str, rows: list[dict]) -> str:
    """One line per (kind, x): plain steps/s, ms per member, and the method ratios."""
    if not rows:
        return ""
    groups: dict[tuple, dict] = defaultdict(dict)
    for r in rows:
        groups[(r["kind"], r[x])][(r["method"], r["rank"])] = r
    lines = []
    for (kind, value), g in sorted(groups.items()):
        plain, egg, oes = (
            g.get(("plain", None)),
            g.get(("eggroll", 1)),
            g.get(("openai_es", None)),
        )
        speed = {k: v["env_steps_per_s"] for k, v in g.items()}

        def per_member(r):
            return _fmt(
                None
                if r is None
                else 1e3 * r["time_per_generation_s"] / r["population"],
                3,
            )

        lines.append([
            kind, str(value), _fmt(plain and plain["env_steps_per_s"]),
            per_member(plain), per_member(egg),
            _fmt(egg and egg["ratio_to_plain"]), _fmt(oes and oes["ratio_to_plain"], 3),
            _fmt(egg and oes and speed[("eggroll", 1)] / speed[("openai_es", None)], 1),
        ])  # fmt: skip
    header = ["policy", x, "plain steps/s", "plain ms/member", "eggroll ms/member",
              "eggroll / plain", "openai_es / plain", "eggroll / openai_es"]  # fmt: skip
    return f"{title}:\n\n" + _table(header, lines)


def load(path: str | Path) -> dict:
    """A benchmark JSON (as `write` writes it); a ValueError says why a file is not."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not readable as JSON ({err})") from None
    if (
        not isinstance(doc, dict)
        or "device" not in doc
        or not isinstance(doc.get("results"), list)
    ):
        raise ValueError("not a benchmark JSON (no device and list of results)")
    for i, r in enumerate(doc["results"]):  # another tool's rows (bench_adapters.py)
        missing = [k for k in ROW_KEYS if not isinstance(r, dict) or k not in r]
        if missing:
            raise ValueError(
                f"not a benchmark JSON (results[{i}] has no {', '.join(missing)})"
            )
    return doc


def main(argv: list[str] | None = None) -> None:
    """``python -m esrl.bench_report [FILE]``: print the tables of a benchmark JSON."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m esrl.bench_report",
        description="Print the tables of a JSON that scripts/benchmark.py wrote.",
    )
    parser.add_argument(
        "file", nargs="?", default="docs/benchmark.json", help="%(default)s"
    )
    path = Path(parser.parse_args(argv).file)
    if not path.is_file():
        raise SystemExit(f"{path}: no such file; write one with scripts/benchmark.py")
    try:
        doc = load(path)
    except ValueError as err:
        raise SystemExit(f"{path}: {err}") from None
    command = f"; `{doc['command']}`" if doc.get("command") else ""
    print(f"{doc['device']}{command}\n")
    print(tables(doc["results"]))


if __name__ == "__main__":
    main()
