"""The committed raw benchmark results hold numbers where they hold measurements (issue 20: a results file was
reported to store `ms` / `overhead` as Python repr strings)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

RESULTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("results_*.json"))


def strings(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, f"{path}[{index}]")
    elif isinstance(value, str):
        yield path, value


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_measurements_are_numbers_not_reprs(path):
    for where, text in strings(json.loads(path.read_text())):
        try:
            literal = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            continue
        assert not isinstance(literal, (int, float, dict, list, tuple)), f"{path.name}{where} holds a repr: {text!r}"
