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
    series: dict[str, dict[int, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in report["local_log"]:
        series[row["handler"]][row["shards"]].append((row["batch"], row["records_per_s"]))
    shard_counts = sorted({shards for by_shards in series.values() for shards in by_shards})
    colors = {shards: plt.get_cmap("viridis")(i / max(1, len(shard_counts) - 1) * 0.85)
              for i, shards in enumerate(shard_counts)}
    figure, panels = plt.subplots(1, len(series), figsize=(4.2 * len(series) + 1, 4.8), dpi=110, sharey=True,
                                  squeeze=False)
    for axes, (handler, by_shards) in zip(panels[0], series.items(), strict=True):
        for shards in sorted(by_shards):
            points = sorted(by_shards[shards])
            axes.plot([b for b, _ in points], [r for _, r in points], "o-", color=colors[shards],
                      label=f"{shards} shard{'s' if shards > 1 else ''}")
        axes.axhline(report["floor_records_per_s"], color="black", linestyle=":", linewidth=1.5,
                     label="floor: bare orjson.loads")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_title(f"{handler} handler", fontsize=10)
        axes.set_xlabel("batch size (max records per call)")
        axes.grid(True, which="both", alpha=0.3)
    panels[0][0].set_ylabel("records/s")
    panels[0][-1].legend(fontsize=8, loc="lower right")
    machine = report["machine"]
    figure.suptitle(f"streamfn on the local log: {report['records']:,} records per run, {machine['cpus']} CPUs, "
                    f"Python {machine['python']}, {machine['loop']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
