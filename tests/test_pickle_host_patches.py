"""Weight loading survives what the webui does to `pickle` (pytorch_lightning 1.9 replaces `pickle.Unpickler`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_torch_zip_loads_after_lightning_replaced_pickle_unpickler(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.arange(6.0).reshape(2, 3)}, path)
    script = f"""
import pickle, sys
sys.path.insert(0, {str(REPO)!r})
pickle.Unpickler = type("RedirectingUnpickler", (pickle._Unpickler,), {{}})  # what lightning 1.9 does at import
from safe_files.weights import load_pickled_weights
state = load_pickled_weights({str(path)!r})
assert state["conv.weight"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], state
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
