"""Run model-file loaders on hostile files in this process, under an address-space cap, and report for each what
happened, its wall time and its peak RSS above the RSS before it (Linux: VmHWM, reset between cases).

    python -m tests.alloc_probe CASES.json    # [{"loader": "capface", "path": "...", "warm": "..."}, ...]

Prints one JSON list: {"loader", "path", "outcome": "refused"|"loaded", "error", "message", "seconds",
"peak_rss_delta_mb", "baseline_rss_mb"}. Run it as a child process: a case that is not refused may take the cap.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CAP_ABOVE_BASELINE = 1 << 30


def _status(field: str) -> int:
    """A /proc/self/status value in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, which ru_maxrss reports


def _loaders() -> dict[str, Callable[[Path], Any]]:
    from caphuman_ext.checkpoint import load_capface
    from preprocessors.identity import weights
    from preprocessors.identity.clip_files import ClipSearch, locate_clip_vision, read_clip_vision
    from safe_files.flame_pickle import load_flame_model, load_landmark_embedding

    weights.HASHES = weights.HashCache(None)  # nothing written beside the extension

    def clip(path: Path) -> Any:  # sd-webui-controlnet's <annotator dir>/clip_vision/clip_vitl.pth
        return read_clip_vision(locate_clip_vision(ClipSearch(annotator_dirs=[path.parent.parent], hub_caches=[])))

    return {"capface": load_capface, "clip": clip, "flame": load_flame_model, "landmarks": load_landmark_embedding}


def _run(call: Callable[[Path], Any], path: Path) -> dict[str, Any]:
    gc.collect()
    _reset_peak()
    before = _status("VmRSS")
    start = time.perf_counter()
    try:
        call(path)
        outcome, error, message = "loaded", None, ""
    except BaseException as caught:  # noqa: BLE001 - reported, MemoryError included
        outcome, error, message = "refused", type(caught).__name__, str(caught)[:600]
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")  # ru_maxrss also keeps the peak of threads that exited before the reset
    return {"path": str(path), "outcome": outcome, "error": error, "message": message, "seconds": round(seconds, 3),
            "peak_rss_delta_mb": round((peak - before) / 1024, 1), "baseline_rss_mb": round(before / 1024, 1)}


def main(cases_file: str) -> None:
    cases = json.loads(Path(cases_file).read_text())
    loaders = _loaders()
    for case in cases:  # every code path imported and run once on a harmless file of the same kind
        if case.get("warm"):
            _run(loaders[case["loader"]], Path(case["warm"]))
    gc.collect()
    limit = _status("VmSize") * 1024 + CAP_ABOVE_BASELINE
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    results = [{"loader": case["loader"], **_run(loaders[case["loader"]], Path(case["path"]))} for case in cases]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
