"""Benchmark reports: method-to-method ratios, the JSON file and ``benchmark.png``."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

CASE_KEYS = ("env", "kind", "hidden", "num_layers", "horizon")


def _case(row: dict) -> tuple:
    return tuple(row[k] for k in CASE_KEYS)


def ratios(rows: list[dict]) -> list[dict]:
    """Per case: eggroll (each rank) / openai_es, / evosax_open_es and / plain."""
    by_case: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if not r.get("skipped"):
            by_case[_case(r) + (r["population"],)].append(r)
    out = []
    for key, group in by_case.items():
        speed = {(r["method"], r["rank"]): r["env_steps_per_s"] for r in group}
        for (method, rank), eggroll in speed.items():
            if method != "eggroll":
                continue
            entry = dict(zip(CASE_KEYS + ("population",), key), rank=rank)
            for peer in ("plain", "openai_es", "evosax_open_es"):
                if (peer, None) in speed:
                    entry[f"eggroll_to_{peer}"] = eggroll / speed[(peer, None)]
            out.append(entry)
    return out


def write(path: str | Path, device: str, rows: list[dict], meta: dict) -> None:
    """Write the DESIGN.md JSON contract (plus ratios and run metadata)."""
    doc = {"device": device, **meta, "results": rows, "ratios": ratios(rows)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def _series(rows: list[dict], x: str, fixed: dict) -> dict[str, list[tuple]]:
    """(x, steps/s, ratio) points per method label among rows matching ``fixed``."""
    lines: dict[str, list[tuple]] = defaultdict(list)
    for r in rows:
        if r.get("skipped") or any(r.get(k) != v for k, v in fixed.items()):
            continue
        label = r["method"] + (f" r{r['rank']}" if r["rank"] not in (None, 1) else "")
        lines[f"{label} ({r['kind']})"].append(
            (r[x], r["env_steps_per_s"], r["ratio_to_plain"])
        )
    return {k: sorted(set(v)) for k, v in lines.items() if len({p[0] for p in v}) > 1}


def plot(path: str | Path, device: str, rows: list[dict]) -> None:
    """Ratio to plain vs width and steps/s vs population (bars if there are no sweeps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cartpole = {"env": "gymnax/CartPole-v1"}
    widths = _series(rows, "hidden", {**cartpole, "population": 512, "horizon": 100})
    pops = _series(rows, "population", {**cartpole, "hidden": 256, "horizon": 200})
    pops = {k: v for k, v in pops.items() if not k.startswith("ppo")}
    panels = [p for p in (widths, pops) if p] or [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, panel in zip(axes, panels):
        if panel is widths and widths:
            for label, pts in widths.items():
                ax.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=label)
            ax.set(xscale="log", yscale="log", xlabel="hidden width",
                   ylabel="env steps/s relative to plain",
                   title="CartPole, population 512: ratio to plain vs width")  # fmt: skip
        elif panel is pops and pops:
            for label, pts in pops.items():
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
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
    labels = [
        f"{r['kind']} {r['hidden']}\n{r['method']}"
        + (f" r{r['rank']}" if r["rank"] not in (None, 1) else "")
        for r in done
    ]
    ax.bar(range(len(done)), [r["env_steps_per_s"] for r in done], label="env steps/s")
    ax.set_xticks(range(len(done)), labels, rotation=70, fontsize=7)
    ax.set(yscale="log", ylabel="env steps/s", title="steps/s per method (one run)")
