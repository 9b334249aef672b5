"""``bench/results/latest.png``: p50/p99 latency vs concurrency, throughput bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_plot(results: dict[str, Any], path: Path) -> Path | None:
    """Write the figure; ``None`` when matplotlib (the ``bench`` extra) is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    matrix = results["matrix"]
    labels = {r["key"]: r["label"] for r in results["rows"]}
    keys = [r["key"] for r in results["rows"] if r["key"] in matrix]
    concs = sorted({int(c) for cells in matrix.values() for c in cells})
    fig, (lat_ax, rps_ax) = plt.subplots(1, 2, figsize=(15, 6))
    for i, key in enumerate(keys):
        color = f"C{i}"
        p50 = [matrix[key][c]["p50_ms"] for c in concs]
        p99 = [matrix[key][c]["p99_ms"] for c in concs]
        lat_ax.plot(concs, p50, "-o", color=color, label=f"{labels[key]} p50")
        lat_ax.plot(concs, p99, "--", color=color, alpha=0.7)
    lat_ax.set(
        xscale="log",
        yscale="log",
        xlabel="connections",
        ylabel="latency ms",
        title="Latency vs concurrency (solid p50, dashed p99)",
    )
    lat_ax.set_xticks(concs, [str(c) for c in concs])
    lat_ax.legend(fontsize=7)
    width = 0.8 / max(1, len(keys))
    for i, key in enumerate(keys):
        xs = [j + i * width for j in range(len(concs))]
        rps_ax.bar(
            xs, [matrix[key][c]["rps"] for c in concs], width, label=labels[key], color=f"C{i}"
        )
    rps_ax.set_xticks(
        [j + width * (len(keys) - 1) / 2 for j in range(len(concs))], [f"{c} conns" for c in concs]
    )
    # Log scale: the rows span three orders of magnitude (nginx vs a slow gateway).
    rps_ax.set(yscale="log", ylabel="requests / s (median, log)", title="Throughput")
    rps_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=4)
    commit = results["facts"]["commit"][:10]
    fig.suptitle(
        f"authz-gateway bench, commit {commit}, mode {results['mode']} (shared 2-core box)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
