"""Plot whole-generation overheads from bench_generation.py's JSON: per config, each variant's overhead over plain
(median of per-round ratios, bars: quartiles).

    python benchmarks/plot_generation.py results_a.json [results_b.json ...] --out docs/images/generation_overhead.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser()
    parser.add_argument("results", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    panels = []
    for path in args.results:
        data = json.loads(Path(path).read_text())
        for row in data["results"]:
            panels.append((Path(path).stem, data["info"]["device"], row))
    groups = {}
    for name, device, row in panels:
        groups.setdefault((name, device, row["dtype"], row["sampler"]), []).append(row)
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.2), squeeze=False)
    for ax, ((name, device, dtype, sampler), rows) in zip(axes[0], groups.items(), strict=True):
        variants = [v for v in rows[0]["overhead"] if v != "plain"]
        width = 0.8 / len(variants)
        for index, variant in enumerate(variants):
            xs, ys, low, high = [], [], [], []
            for position, row in enumerate(rows):
                stats = row["overhead"].get(variant)
                if stats is None:
                    continue
                xs.append(position + (index - (len(variants) - 1) / 2) * width)
                ys.append(100 * stats["median"])
                low.append(100 * (stats["median"] - stats["q1"]))
                high.append(100 * (stats["q3"] - stats["median"]))
            ax.bar(xs, ys, width, yerr=[low, high], capsize=2, label=variant)
        ax.set_xticks(range(len(rows)), [f"{r['size']}², batch {r['batch']}" for r in rows])
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel("whole generation vs plain (%)")
        ax.set_title(f"{name}: {device}, {dtype}, {sampler}, 20 steps", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
