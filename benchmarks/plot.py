"""
``python -m benchmarks.plot RESULTS.json [-o docs/_static/fanout.png]``: a PNG
of fan-out deliveries/s against the number of subscribers, one line per
server (the median of the runs, the bars from the slowest to the fastest
run), from the ``--json`` file of ``python -m benchmarks all`` or
``python -m benchmarks sweep``.

Needs matplotlib (``pip install '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "_static",
                              "fanout.png")

#: Line styles: twisted_phoenix stands out, the floors are dashed.
STYLES = {
    "phoenix": dict(color="#d9480f", linewidth=2.6, marker="o", zorder=5),
    "raw": dict(color="#495057", linestyle="--", marker="s"),
    "prepared": dict(color="#868e96", linestyle=":", marker="s"),
    "websockets": dict(color="#1c7ed6", marker="^"),
    "socketio": dict(color="#2b8a3e", marker="v"),
    "channels": dict(color="#862e9c", marker="D"),
}


def sweep_series(results: dict[str, Any]) -> tuple[dict[str, dict[int, list[float]]], dict[str, str], dict[str, str]]:
    """Per server, per subscriber count: every run's deliveries/s; the labels; the servers that were n/a."""
    series: dict[str, dict[int, list[float]]] = {}
    unavailable: dict[str, str] = {}
    for outcome in results.get("outcomes", []):
        if outcome["workload"] != "sweep":
            continue
        unavailable.update(outcome.get("unavailable", {}))
        for row in outcome["rows"]:
            series.setdefault(row["server"], {}).setdefault(int(row["size"]), []).append(float(row["value"]))
    return series, results.get("labels", {}), unavailable


def plot(results: dict[str, Any], output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    series, labels, unavailable = sweep_series(results)
    if not series:
        raise SystemExit("no fan-out (sweep) results in this file")
    order = [name for name in labels if name in series] + [name for name in series if name not in labels]
    fig, ax = plt.subplots(figsize=(8, 5.8), dpi=110)
    for name in order:
        sizes = sorted(series[name])
        med = [statistics.median(series[name][c]) for c in sizes]
        low = [m - min(series[name][c]) for m, c in zip(med, sizes)]
        high = [max(series[name][c]) - m for m, c in zip(med, sizes)]
        ax.errorbar(sizes, med, yerr=[low, high], capsize=3, label=labels.get(name, name),
                    **STYLES.get(name, {}))
    ax.set_xscale("log")
    all_sizes = sorted({c for s in series.values() for c in s})
    ax.set_xticks(all_sizes)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y / 1000:,.0f}k" if y >= 1000 else f"{y:,.0f}"))
    ax.set_xlabel("subscribers of the topic")
    ax.set_ylabel("deliveries/s (median of the runs; bars: min to max)")
    opts = results.get("options", {})
    machine = results.get("machine", {})
    title = f"Fan-out of {opts.get('message_bytes', '?')}-byte broadcasts to one topic"
    if machine:
        title += f" ({machine.get('nproc', '?')} cores, Python {machine.get('python', '?')})"
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    note = "; ".join(f"{labels.get(k, k)}: n/a ({v})" for k, v in unavailable.items() if k not in series)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="the --json file of `python -m benchmarks all` or `... sweep`")
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT, help="the PNG to write (docs/_static/fanout.png)")
    args = parser.parse_args(argv)
    with open(args.results) as f:
        results = json.load(f)
    plot(results, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
