"""The benchmark chart: the JSON rows as records/s and as CPU µs per record by batch size, side by
side, and the no-op handler's µs per batch; one line per contender and shard count, the legend
below the panels (never over the data), plain axis numbers."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def draw(report: dict[str, Any], path: Path) -> Path | None:
    """Write the PNG; None when matplotlib is not installed (the ``bench`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        return None
    rows = report["local_log"]
    batches = sorted({row["batch"] for row in rows if row.get("batch")})
    decoding: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    floors: dict[str, tuple[float, float]] = {}
    noop: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        shards = f"{row['shards']} shard{'s' if row['shards'] > 1 else ''}"
        if row["contender"] == "floor":
            floors[f"floor (bare orjson.loads), {shards}"] = (row["records_per_s"], row["cpu_us_per_record"])
        elif row.get("handler") == "noop":
            noop[f"streamfn no-op, {shards}"].append((row["batch"], row["us_per_batch"]))
        else:
            label = f"{row['contender']} {row.get('handler', '')}, {shards}".replace(" json,", ",")
            decoding[label].append((row["batch"], row["records_per_s"], row["cpu_us_per_record"]))
    figure, (rate, cpu, per_batch) = plt.subplots(1, 3, figsize=(15, 5.6), dpi=110)
    plain = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 10 else f"{value:g}")
    cmap = plt.get_cmap("tab10")
    for i, (label, points) in enumerate(sorted(decoding.items())):
        points.sort()
        xs = [p[0] for p in points]
        rate.plot(xs, [p[1] for p in points], "o-", color=cmap(i), label=label)
        cpu.plot(xs, [p[2] for p in points], "o-", color=cmap(i))
    for j, (label, (records_per_s, cpu_us)) in enumerate(sorted(floors.items())):
        style = {"color": "black", "linestyle": (":", "--", "-.")[j % 3], "linewidth": 1.3}
        rate.axhline(records_per_s, label=label, **style)
        cpu.axhline(cpu_us, **style)
    for i, (label, points) in enumerate(sorted(noop.items())):
        points.sort()
        per_batch.plot([p[0] for p in points], [p[1] for p in points], "s-", color=cmap(len(decoding) + i),
                       label=label)
    for axes, title, ylabel in ((rate, "JSON: records/s (higher is better)", "records/s"),
                                (cpu, "JSON: CPU µs per record (lower is better)", "CPU µs per record"),
                                (per_batch, "no-op: µs per batch (engine cost)", "µs per batch")):
        if axes is rate:
            axes.set_ylim(bottom=0)
        else:  # batch size 1 costs ~20x batch size 1000 per record: a log scale keeps both readable
            axes.set_yscale("log")
            axes.yaxis.set_minor_formatter(NullFormatter())
        axes.set_xscale("log")
        axes.set_xticks(batches)
        axes.xaxis.set_major_formatter(plain)
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.yaxis.set_major_formatter(plain)
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("batch size (max records per call)")
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
    handles = [h for axes in (rate, per_batch) for h in axes.get_legend_handles_labels()[0]]
    labels = [label for axes in (rate, per_batch) for label in axes.get_legend_handles_labels()[1]]
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    versions = report.get("versions", {})
    figure.suptitle(f"streamfn {report.get('commit', '')[:12]} on the local log: {report['records']:,} records of"
                    f" ~246 B per run, medians of {report.get('reps', 1)} reps, {versions.get('cpus', '?')} CPUs,"
                    f" Python {versions.get('python', '?')}", fontsize=10)
    figure.tight_layout(rect=(0, 0.14, 1, 1))
    figure.savefig(path)
    plt.close(figure)
    return path
