"""Press Settings' "Reload UI" (the webui rebuilds its app in-process and calls on_app_started again) while a
client polls every 0.5 s, as the webui's own page does; afterwards the extension's routes and its 422 answers must
still be there. Usage: python reload_race.py [rounds] (the webui at CAPHUMAN_WEBUI_URL, default 127.0.0.1:7860)."""

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

URL = os.environ.get("CAPHUMAN_WEBUI_URL", "http://127.0.0.1:7860")


def request(path: str, payload: dict | None = None, timeout: float = 5) -> int:
    data = None if payload is None else json.dumps(payload).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(URL + path, data, {"Content-Type": "application/json"}),
                                    timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def press_reload_ui() -> None:
    config = json.loads(urllib.request.urlopen(URL + "/config", timeout=30).read())
    button = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "settings_restart_gradio")
    index = next(i for i, d in enumerate(config["dependencies"])
                 if button in [t[0] if isinstance(t, list) else t for t in d["targets"]])
    request("/run/predict", {"fn_index": index, "data": [], "session_hash": "race"}, timeout=30)


def one_round() -> dict:
    seen, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            seen.append(request("/caphuman/v1/version", timeout=2))
            time.sleep(0.5)

    poller = threading.Thread(target=poll)
    poller.start()
    press_reload_ui()
    time.sleep(3)
    deadline = time.time() + 300
    while request("/sdapi/v1/options", timeout=5) != 200 and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    stop.set()
    poller.join()
    bad = {"prompt": "x", "steps": 1, "width": 64, "height": 64,
           "alwayson_scripts": {"CapHuman": {"args": [{"enabled": True, "strength": 9}]}}}
    return {"polls": len(seen), "poll_answers": sorted(set(seen)), "version_after": request("/caphuman/v1/version"),
            "bad_strength_after": request("/sdapi/v1/txt2img", bad, timeout=120)}


if __name__ == "__main__":
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
        print(one_round())
