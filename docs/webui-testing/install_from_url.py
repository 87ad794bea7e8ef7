"""Extensions → Install from URL, driven over HTTP as the browser drives it: the Install button's gradio function,
found in the running webui's `/config`, is called with (directory "", URL, branch ""), so the webui clones the URL
into `extensions/` and runs the extension's `install.py`. Works with gradio 3 (A1111, Forge Classic) and gradio 4
(Forge Neo). The extension is loaded after a restart.

    python install_from_url.py URL_OR_LOCAL_CLONE_PATH [WEBUI_URL]
"""

from __future__ import annotations

import json
import sys
import urllib.request
import uuid


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def _post(url: str, payload: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=1800) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def install_fn_index(config: dict) -> int:
    """The dependency triggered by the "Install" button whose inputs include the URL textbox."""
    components = {c["id"]: c for c in config["components"]}
    url_boxes = {i for i, c in components.items()
                 if c.get("props", {}).get("label") == "URL for extension's git repository"}
    for index, dependency in enumerate(config["dependencies"]):
        targets = dependency.get("targets", [])
        ids = [t[0] if isinstance(t, list) else t for t in targets]
        buttons = [components.get(i, {}).get("props", {}).get("value") for i in ids]
        if "Install" in buttons and url_boxes & set(dependency.get("inputs", [])):
            return index
    raise SystemExit("no Install-from-URL function in this webui's gradio config")


def _queued(webui: str, fn_index: int, data: list) -> str:
    """gradio 4: join the queue, read the event stream until the result."""
    session = uuid.uuid4().hex
    status, body = _post(f"{webui}/queue/join", {"fn_index": fn_index, "data": data, "session_hash": session,
                                                  "event_data": None, "trigger_id": None})
    if status != 200:
        raise SystemExit(f"queue/join: {status} {body[:300]!r}")
    with urllib.request.urlopen(f"{webui}/queue/data?session_hash={session}", timeout=1800) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return json.dumps(message.get("output", message))
    raise SystemExit("event stream ended without a result")


def install(url: str, webui: str = "http://127.0.0.1:7860") -> str:
    config = _get(f"{webui}/config")
    fn_index = install_fn_index(config)
    data = ["", url, ""]
    if str(config.get("version", "3")).startswith("3"):
        status, body = _post(f"{webui}/run/predict", {"fn_index": fn_index, "data": data,
                                                      "session_hash": uuid.uuid4().hex})
        if status != 200:
            raise SystemExit(f"run/predict: {status} {body[:300]!r}")
        return body.decode()
    return _queued(webui, fn_index, data)


if __name__ == "__main__":
    print(install(sys.argv[1], *sys.argv[2:3]))
