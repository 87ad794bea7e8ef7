"""The results CSV: one row per image, written as soon as it is scored; read back to resume and to summarise."""

from __future__ import annotations

import csv
from pathlib import Path

from .protocol import KEY_COLUMNS

SCORE_COLUMNS = ("face_found", "head_fitted", "identity_similarity", "shape", "pose", "expression", "lighting",
                 "pose_global", "jaw", "yaw_deg", "pitch_deg", "roll_deg", "rotation_deg", "position_error",
                 "landmark_error")
COLUMNS = (*KEY_COLUMNS, "prompt", "cfg_scale", "width", "height", "image", *SCORE_COLUMNS,
           "error")
NUMERIC = ("identity_similarity", "shape", "pose", "expression", "lighting", "pose_global", "jaw", "yaw_deg",
           "pitch_deg", "roll_deg", "rotation_deg", "position_error", "landmark_error")


def row_key(row: dict) -> tuple[str, ...]:
    return tuple(str(row[c]) for c in KEY_COLUMNS)


def read_rows(path: Path) -> list[dict]:
    """Rows of an existing CSV, the last one per key (a retried row replaces its failed attempt)."""
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in KEY_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a results table of this runner (no {missing[0]} column); "
                             "use another --out folder")
        latest: dict[tuple, dict] = {}
        for row in reader:
            row = {key: _uncell(value) for key, value in row.items()}
            latest[row_key(row)] = row
    return list(latest.values())


def done_keys(rows: list[dict]) -> set[tuple[str, ...]]:
    """Keys whose image was generated and scored without error."""
    return {row_key(r) for r in rows if not r.get("error")}


def append_row(path: Path, row: dict) -> None:
    """Append one row (header first if the file is new), flushed so an interrupted run keeps it."""
    new = not Path(path).is_file() or Path(path).stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({c: _cell(row.get(c)) for c in COLUMNS})
        handle.flush()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula (CSV injection)


def _cell(value) -> str:
    """A CSV cell: numbers as numbers; text starting like a formula prefixed with ' so no spreadsheet runs it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) or text.startswith("'") else text


def _uncell(text: str | None) -> str | None:
    """A cell as written by `_cell`, read back (the ' of neutralised text removed)."""
    return text[1:] if isinstance(text, str) and text.startswith("'") else text


def number(row: dict, column: str) -> float | None:
    """A numeric cell, or None when empty (no face, head not fitted, failed row)."""
    value = row.get(column)
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def truthy(row: dict, column: str) -> bool:
    return str(row.get(column, "")).lower() == "true"
