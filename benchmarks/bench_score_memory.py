"""Memory of `POST /caphuman/v1/score` over repeated requests: the process's RSS before and after each one.

Runs the real route (FastAPI TestClient, the real `Scorer` and `score_request`) in this process, on the synthetic
model files of ../shared/parity (make_synthetic_identity.py and make_synthetic_deca.py outputs), with a watchdog that
ends the process when its RSS passes `--cap-gb`. Run it as its own process:

    python benchmarks/bench_score_memory.py --identity DIR --deca DIR [--side 2048] [--requests 3] [--no-trim]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL_SUFFIXES = (".pth", ".pt", ".pkl", ".npy", ".obj", ".npz", ".tar")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def watchdog(cap_gb: float) -> None:
    def watch() -> None:
        while True:
            if rss_mb() > cap_gb * 1024:
                print(json.dumps({"killed": f"RSS over {cap_gb} GB"}), flush=True)
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def png_b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identity", type=Path, required=True)
    parser.add_argument("--deca", type=Path, required=True)
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--cap-gb", type=float, default=8.0)
    parser.add_argument("--no-trim", action="store_true", help="keep the model-work thread, skip malloc_trim")
    parser.add_argument("--vary", action="store_true", help="other photos in every request (no cache hit)")
    args = parser.parse_args()
    watchdog(args.cap_gb)

    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from PIL import Image

    from caphuman_ext.quality import Scorer
    from caphuman_ext.quality.api import score_request
    from caphuman_ext.unit import api

    if args.no_trim:
        try:
            from caphuman_ext.unit import model_work
            model_work.trim_heap = lambda: None
        except ImportError:
            pass
    folder = Path(tempfile.mkdtemp(prefix="score_models_"))
    for source in [*args.identity.iterdir(), *args.deca.iterdir()]:
        if source.suffix in MODEL_SUFFIXES:
            os.symlink(source, folder / source.name)
    scorer = Scorer([folder], allow_download=False)
    app = FastAPI()
    api.install_api(app, folders=lambda: [folder], preview=lambda *a: {}, version="bench",
                    score=lambda payload: score_request(payload, scorer))
    photo = Image.open(args.identity / "identity.png").convert("RGB")
    big = photo.resize((args.side, args.side), Image.BICUBIC)
    small = png_b64(photo)
    def request(index: int) -> dict:
        shown = big.rotate(3 * index, Image.BICUBIC) if args.vary else big  # another photo key: no cache hit
        photo64 = png_b64(shown)
        return {"image": photo64, "units": [{"reference_images": [photo64], "pose_image": photo64,
                                             "modes": ["position", "pose", "expression", "lighting"]}],
                "overlay": True}

    size_mb = len(json.dumps(request(0))) / 2**20
    results = {"side": args.side, "body_mb": round(size_mb, 1), "trim": not args.no_trim, "vary": args.vary}
    with TestClient(app) as client:
        warm = client.post(api.SCORE_PATH, json={"image": small, "units": [{"reference_images": [small]}]})
        results["warm_status"] = warm.status_code
        results["rss_after_models_mb"] = round(rss_mb())
        rows = []
        for index in range(args.requests):
            body = request(index)
            start = time.perf_counter()
            answer = client.post(api.SCORE_PATH, json=body)
            del body
            rows.append({"request": index + 1, "status": answer.status_code,
                         "seconds": round(time.perf_counter() - start, 1), "rss_mb": round(rss_mb())})
            del answer
        results["requests"] = rows
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
