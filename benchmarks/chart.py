"""The benchmark chart: records/s by batch size, one line per handler and shard count, the floor as a line."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def draw(report: dict[str, Any], path: Path) -> Path | None:
    """Write the PNG; None when matplotlib is not installed (it is an optional dev dependency)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    for row in report["local_log"]:
        series[(row["handler"], row["shards"])].append((row["batch"], row["records_per_s"]))
    figure, axes = plt.subplots(figsize=(9, 5.5), dpi=110)
    styles = {"noop": "o-", "json": "s-", "json-sync": "^--"}
    for (handler, shards), points in sorted(series.items()):
        points.sort()
        axes.plot([b for b, _ in points], [r for _, r in points], styles.get(handler, "o-"),
                  label=f"{handler}, {shards} shard{'s' if shards > 1 else ''}")
    axes.axhline(report["floor_records_per_s"], color="black", linestyle=":", linewidth=1.5,
                 label="floor: bare orjson.loads loop")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("batch size (max records per handler call)")
    axes.set_ylabel("records/s")
    machine = report["machine"]
    axes.set_title(f"streamfn on the local log: {report['records']:,} records per run, "
                   f"{machine['cpus']} CPUs, Python {machine['python']}, {machine['loop']}", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
