"""Plot `bench_small_cards.py` results: peak memory per job of the first-hour sequence, per emulated card.

    python benchmarks/plot_small_cards.py benchmarks/results_small_cards_h200.json docs/images/small_cards.png
"""

from __future__ import annotations

import json
import sys


def main(source: str, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.load(open(source))
    runs = data["runs"]
    cards = sorted({run["card_gb"] for run in runs})
    jobs = data["info"]["sequence"]
    styles = {"plain": ("tab:gray", "o"), "caphuman": ("tab:blue", "s"), "caphuman-count": ("tab:red", "x")}
    labels = {"plain": "without CapHuman", "caphuman": "CapHuman, byte budget",
              "caphuman-count": "CapHuman, count bound only"}
    fig, axes = plt.subplots(1, len(cards), figsize=(5 * len(cards), 4.6), sharey=False)
    for axis, card in zip(axes, cards):
        for run in (r for r in runs if r["card_gb"] == card):
            color, marker = styles[run["variant"]]
            peaks = [job["peak_allocated_gb"] for job in run["jobs"]]
            axis.plot(range(len(peaks)), peaks, color=color, marker=marker, label=labels[run["variant"]])
            for index, job in enumerate(run["jobs"]):
                if not job["completed"]:
                    axis.annotate("OOM", (index, peaks[index]), color=color, textcoords="offset points",
                                  xytext=(4, 6), fontsize=9, fontweight="bold")
        axis.axhline(card, color="black", linestyle="--", linewidth=0.8)
        flags = data["info"]["cards"][str(card)]
        axis.set_title(f"{card} GB card ({'--' + flags if flags != 'none' else 'no flags'})")
        axis.set_xticks(range(len(jobs)))
        axis.set_xticklabels(jobs, rotation=35, ha="right", fontsize=8)
        axis.set_ylabel("peak allocated, GB")
        axis.set_ylim(0, card + 0.5)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"A user's first hour, emulated cards on {data['info']['gpu']} (fp16, real-size SD1.5 + CapFace)")
    fig.tight_layout()
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
