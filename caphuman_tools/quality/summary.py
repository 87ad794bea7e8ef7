"""The results table summarised: the paper's columns overall and per head condition / strength / pose-only phase /
identity, as markdown, and a plot when matplotlib is installed."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

from .table import number, truthy

# CapHuman, CVPR 2024, Table 1 (HumanIPHC: 100 identities x 35 prompts x 10 head conditions)
PAPER = {"identity_similarity": 0.8429, "shape": 0.1132, "pose": 0.0564, "expression": 0.1349, "lighting": 0.1047}
COLUMNS = (("identity_similarity", "ID sim ↑"), ("shape", "shape ↓"), ("pose", "pose ↓"), ("expression", "exp ↓"),
           ("lighting", "light ↓"), ("yaw_deg", "yaw° ↓"), ("pitch_deg", "pitch° ↓"), ("roll_deg", "roll° ↓"))
GROUPS = (("condition", "head condition"), ("strength", "strength"), ("pose_only", "pose-only phase"),
          ("sampler", "sampler"), ("steps", "step count"), ("identity", "identity"))


def mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def aggregate(rows: list[dict]) -> dict:
    """{column: (mean, std) | None, 'images': n, 'faces': n found, 'failed': n with an error}.
    Means are over the images where the value exists (identity: face found; head errors: head fitted)."""
    scored = [r for r in rows if not r.get("error")]
    result: dict = {"images": len(scored), "faces": sum(truthy(r, "face_found") for r in scored),
                    "failed": len(rows) - len(scored)}
    for column, _ in COLUMNS:
        result[column] = mean_std([v for r in scored if (v := number(r, column)) is not None])
    return result


def grouped(rows: list[dict], column: str) -> OrderedDict[str, dict]:
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for row in rows:
        groups.setdefault(str(row.get(column, "")), []).append(row)
    return OrderedDict((name, aggregate(members)) for name, members in groups.items())


def _cell(value: tuple[float, float] | None, digits: int) -> str:
    return "–" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def _line(name: str, stats: dict) -> str:
    cells = [_cell(stats[c], 1 if c.endswith("_deg") else 4) for c, _ in COLUMNS]
    return f"| {name} | " + " | ".join(cells) + f" | {stats['faces']}/{stats['images']} |"


def _header(first: str) -> list[str]:
    titles = [t for _, t in COLUMNS]
    return [f"| {first} | " + " | ".join(titles) + " | face found |", "|---" * (len(titles) + 2) + "|"]


def markdown(rows: list[dict], title: str = "CapHuman quality scores", plot_note: str = "") -> str:
    overall = aggregate(rows)
    lines = [f"# {title}", "",
             f"{overall['images']} images scored, a face found in {overall['faces']}"
             + (f"; {overall['failed']} failed (see the `error` column; rerun to retry them)" if overall["failed"]
                else "") + ".",
             "Mean ± standard deviation over images; identity similarity over images with a face, head errors over "
             "faces DECA fitted. RMSE of DECA codes against the target head (shape 100, pose 6 = global rotation + "
             "jaw, expression 50, lighting 27 numbers); yaw/pitch/roll: absolute angle errors in degrees.", ""]
    lines += _header("")
    lines.append(_line("this run", overall))
    paper = [f"{PAPER[c]:.4f}" if c in PAPER else "–" for c, _ in COLUMNS]
    lines += ["| CapHuman paper (Table 1) | " + " | ".join(paper) + " | – |", ""]
    for column, name in GROUPS:
        groups = grouped(rows, column)
        if len(groups) < 2 and column != "condition":
            continue
        lines += [f"## Per {name}", ""] + _header(name)
        lines += [_line(group, stats) for group, stats in groups.items()] + [""]
    if plot_note:
        lines += [plot_note, ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> str:
    """Bars per head condition (identity similarity and the four RMSEs), plus lines against strength when several
    strengths were run. Returns a markdown line: the image, or why there is none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(no plot: matplotlib is not installed — `pip install matplotlib` and rerun to get one)"
    metrics = [c for c, _ in COLUMNS[:5]]
    by_condition = grouped(rows, "condition")
    by_strength = grouped(rows, "strength")
    lines = len(by_strength) > 1
    figure, axes = plt.subplots(2 if lines else 1, len(metrics), figsize=(3.2 * len(metrics), 6 if lines else 3.2),
                                squeeze=False)
    names = list(by_condition)
    for axis, metric in zip(axes[0], metrics):
        values = [(stats[metric] or (math.nan, 0.0)) for stats in by_condition.values()]
        axis.bar(range(len(names)), [v[0] for v in values], yerr=[v[1] for v in values], color="#4c72b0")
        if metric in PAPER:
            axis.axhline(PAPER[metric], color="#c44e52", linestyle="--", linewidth=1, label="paper")
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        axis.set_title(dict(COLUMNS)[metric], fontsize=9)
    axes[0][0].legend(fontsize=7)
    if lines:
        strengths = sorted(by_strength, key=float)
        for axis, metric in zip(axes[1], metrics):
            means = [(by_strength[s][metric] or (math.nan, 0.0))[0] for s in strengths]
            axis.plot([float(s) for s in strengths], means, marker="o")
            axis.set_xlabel("strength", fontsize=8)
            axis.set_title(dict(COLUMNS)[metric], fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"![scores per head condition]({Path(path).name})"
