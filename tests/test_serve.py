"""`seqgen serve` for real: a uvicorn server on a free loopback port, real HTTP requests
(text, streaming, batching, translation, a MIDI upload, every kind of bad input), and the
page driven by the system's chromium where one is installed."""

import base64
import io
import json
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import seqgen
from tests.helpers import write_song

pytest.importorskip("fastapi", reason="seqgen serve needs pip install 'seqgen[serve]'")
uvicorn = pytest.importorskip("uvicorn")

from seqgen.serve.config import ServeConfig  # noqa: E402
from seqgen.serve.server import BackgroundServer  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_v1"


def start_server(ckpt, **settings) -> BackgroundServer:
    return BackgroundServer(seqgen.load(ckpt), ServeConfig(ckpt=str(ckpt), **settings))


def request(url: str, body: bytes | None = None, content_type: str = "application/json"):
    """(status, decoded JSON or text) of a GET (no body) or POST."""
    req = urllib.request.Request(
        url,
        data=body,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            status, raw, kind = response.status, response.read(), response.headers["content-type"]
    except urllib.error.HTTPError as err:
        status, raw, kind = err.code, err.read(), err.headers["content-type"]
    return status, (json.loads(raw) if "json" in (kind or "") else raw.decode())


def post(server: BackgroundServer, prompt="", **options):
    body = json.dumps({"prompt": prompt, "options": options}).encode()
    return request(server.url + "/generate", body)


@pytest.fixture(scope="module")
def text_server(text_ckpt):
    server = start_server(text_ckpt, max_prompt_chars=200, max_new_tokens=400)
    yield server
    server.close()


def test_health_info_and_page(text_server):
    assert request(text_server.url + "/health") == (200, {"status": "ready", "waiting": 0})
    status, info = request(text_server.url + "/info")
    assert status == 200 and info["task"] == "text" and info["step"] == 7
    assert info["model"]["n_layer"] == 2 and info["generation_defaults"]["temperature"] == 0.8
    assert info["checkpoint"] == "text"  # its name, not where the server keeps it
    status, html = request(text_server.url + "/")
    assert status == 200 and "<form" in html
    assert "http://" not in html and "https://" not in html  # nothing loaded from elsewhere
    assert request(text_server.url + "/docs")[0] == 404  # no CDN-backed API docs page
    assert request(text_server.url + "/../pyproject.toml")[0] == 404


def test_generate_and_stream_equal_the_python_api(text_server, text_ckpt):
    expected = seqgen.load(text_ckpt).generate("the king", temperature=0, max_new_tokens=20)
    status, answer = post(text_server, "the king", temperature=0, max_new_tokens=20)
    assert status == 200 and answer["output"] == expected and len(expected) > 5
    streamed = {"temperature": 0, "max_new_tokens": 20, "stream": True}
    body = json.dumps({"prompt": "the king", "options": streamed})
    status, events = request(text_server.url + "/generate", body.encode())
    pieces = [
        json.loads(line[6:])["text"]
        for line in events.splitlines()
        if line.startswith("data: ") and "text" in line
    ]
    assert status == 200 and len(pieces) > 3 and "".join(pieces) == expected
    assert events.rstrip().endswith("event: done\ndata: {}")
    seeded = seqgen.load(text_ckpt).generate("the", max_new_tokens=15, seed=7)
    assert post(text_server, "the", max_new_tokens=15, seed=7)[1]["output"] == seeded


def test_requests_join_a_running_batch_with_equal_outputs(text_server, text_ckpt):
    prompts = [
        f"the {word} speaks"
        for word in ("king", "queen", "fool", "lord", "duke", "maid", "page", "knight")
    ]
    generator = seqgen.load(text_ckpt)
    expected = [generator.generate(p, temperature=0, max_new_tokens=12) for p in prompts]
    finished = {}

    def timed(name, prompt, **options):
        answer = post(text_server, prompt, **options)
        finished[name] = time.monotonic()
        return answer

    with ThreadPoolExecutor(len(prompts) + 1) as pool:
        slow = pool.submit(
            timed, "slow", "x", temperature=0, max_new_tokens=400, min_new_tokens=400
        )
        time.sleep(0.05)  # the worker is decoding it: the others join its batch
        answers = list(pool.map(lambda p: timed(p, p, temperature=0, max_new_tokens=12), prompts))
        assert slow.result()[0] == 200
    assert [a[1]["output"] for a in answers] == expected
    assert max(finished[p] for p in prompts) < finished["slow"]  # none waited for it to end


BAD_REQUESTS = [
    (b"not json", "application/json", 400, "body"),
    (b"[1, 2]", "application/json", 422, "body"),
    (b'{"prompt": "a", "colour": 1}', "application/json", 422, "colour"),
    (b'{"prompt": 5}', "application/json", 422, "prompt"),
    (json.dumps({"prompt": "a" * 201}).encode(), "application/json", 413, "prompt"),
    (b'{"options": {"tempreature": 1}}', "application/json", 422, "options.tempreature"),
    (b'{"options": {"temperature": "hot"}}', "application/json", 422, "options.temperature"),
    (b'{"options": {"temperature": -1}}', "application/json", 422, "options.temperature"),
    (b'{"options": {"top_p": 2}}', "application/json", 422, "options.top_p"),
    (b'{"options": {"max_new_tokens": 401}}', "application/json", 422, "options.max_new_tokens"),
    (b'{"options": {"num_beams": 0}}', "application/json", 422, "options.num_beams"),
    (b'{"options": {"seed": "x"}}', "application/json", 422, "options.seed"),
    (b'{"options": {"stop": "x"}}', "application/json", 422, "options.stop"),
    (b'{"options": {"stream": true, "num_beams": 2}}', "application/json", 422, "options.stream"),
    (b'{"options": {"temperature": NaN}}', "application/json", 400, "body"),
    (b'{"options": {"top_p": Infinity}}', "application/json", 400, "body"),
    (
        b'{"options": {"num_beams": 5000, "max_new_tokens": 3}}',
        "application/json",
        422,
        "options.num_beams",
    ),
    (
        json.dumps({"options": {"stop": ["a"] * 9}}).encode(),
        "application/json",
        422,
        "options.stop",
    ),
    (
        json.dumps({"options": {"stop": ["a" * 201]}}).encode(),
        "application/json",
        422,
        "options.stop",
    ),
    (b'{"options": []}', "application/json", 422, "options"),
    (b"prompt=a", "text/plain", 415, "content-type"),
    (b"--x\r\n\r\n--x--\r\n", "multipart/form-data; boundary=x", 415, "file"),
    (b"x" * 20_000, "application/json", 413, "body"),  # over 4 bytes per prompt character
]


@pytest.mark.parametrize(("body", "content_type", "status", "field"), BAD_REQUESTS)
def test_bad_input_is_a_4xx_naming_the_field(text_server, body, content_type, status, field):
    got, answer = request(text_server.url + "/generate", body, content_type)
    assert (got, answer["field"]) == (status, field), answer
    assert answer["error"] and "Traceback" not in answer["error"]


def test_a_full_queue_answers_503(text_ckpt):
    server = start_server(text_ckpt, max_queue=1, batch_size=1)
    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(lambda n: post(server, "x", seed=n, max_new_tokens=300), range(6))
            )
        statuses = sorted(status for status, _ in answers)
        assert statuses[0] == 200 and statuses[-1] == 503
        busy = next(answer for status, answer in answers if status == 503)
        assert busy["error"].startswith("busy:")
    finally:
        server.close()


def test_translation_beam_searches_waiting_together_run_as_one(tmp_path):
    server = start_server(FIXTURES / "translation")
    generator = server.app.state.served.generator
    searched = []  # the prompts of each beam search the worker runs
    many = generator.generate_many
    generator.generate_many = lambda prompts, **options: (
        searched.append(len(prompts)) or many(prompts, **options)
    )
    sources = ["a man", "a dog runs", "two women", "a child", "the street", "a red car"]
    try:
        alone = seqgen.load(FIXTURES / "translation")
        expected = [alone.generate(s, max_new_tokens=10) for s in sources]
        assert request(server.url + "/info")[1]["generation_defaults"]["num_beams"] == 4
        with ThreadPoolExecutor(len(sources) + 1) as pool:
            pool.submit(post, server, "a very long sentence " * 3, max_new_tokens=40)
            time.sleep(0.05)  # the worker is busy with it: the others wait together
            answers = list(pool.map(lambda s: post(server, s, max_new_tokens=10), sources))
        assert answers == [
            (200, {"output": e, "prompt": s, "task": "translation"})
            for e, s in zip(expected, sources, strict=True)
        ]
        assert max(searched) > 1  # beam searches with equal settings batched
        body = json.dumps({"prompt": "a man", "max_tokens": 10}).encode()  # the source text
        status, answer = request(server.url + "/v1/completions", body)
        assert status == 200 and answer["choices"][0]["text"] == expected[0]
        usage = answer["usage"]
        streamed = {
            "prompt": "a man",
            "max_tokens": 10,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        status, events = request(server.url + "/v1/completions", json.dumps(streamed).encode())
        chunks = [
            json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: {")
        ]
        assert status == 200 and events.rstrip().endswith("data: [DONE]")
        assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == expected[0]
        assert chunks[-1]["usage"] == usage  # the beam search's output comes whole
    finally:
        server.close()


def multipart(fields: dict[str, tuple[str, bytes] | str]) -> tuple[bytes, str]:
    boundary = "seqgen-test-boundary"
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f"--{boundary}\r\n".encode())
        if isinstance(value, tuple):
            out.write(
                f'Content-Disposition: form-data; name="{name}"; filename="{value[0]}"\r\n'
                "Content-Type: audio/midi\r\n\r\n".encode()
            )
            out.write(value[1])
        else:
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def far_apart_notes() -> bytes:
    """A MIDI file of ~100 bytes whose last note ends at tick 9,999,999 at the slowest tempo:
    about 1.7e8 time-shift events."""
    import mido

    midi = mido.MidiFile(ticks_per_beat=1)
    midi.tracks.append(
        mido.MidiTrack(
            [
                mido.MetaMessage("set_tempo", tempo=16_777_215, time=0),
                mido.Message("note_on", note=60, velocity=64, time=0),
                mido.Message("note_off", note=60, velocity=0, time=9_999_999),
            ]
        )
    )
    out = io.BytesIO()
    midi.save(file=out)
    return out.getvalue()


def chunked_until_answered(url: str, content_type: str, chunk: bytes, most: int = 10_000_000):
    """POST /generate a body without Content-Length, a chunk at a time, until the server
    answers: (status, JSON answer, bytes sent by then)."""
    import select
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /generate HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: "
            f"{content_type}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        sent = 0
        while sent < most and not select.select([sock], [], [], 0.002)[0]:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or not _whole(answer):
            answer += sock.recv(1 << 16)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), sent


def _whole(answer: bytes) -> bool:
    """Whether an HTTP answer with a Content-Length has all of its body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return len(body) >= length


def test_chunked_uploads_are_counted_as_they_arrive(text_ckpt):
    """A body without Content-Length is refused (413) once it passes the limit, not once it
    has all been read; the server answers the next request as before."""
    server = start_server(text_ckpt, max_prompt_chars=100)
    try:
        status, answer, sent = chunked_until_answered(server.url, "application/json", b"x" * 1000)
        assert (status, answer["field"]) == (413, "body") and sent < 1_000_000
        assert post(server, "the", temperature=0, max_new_tokens=3)[0] == 200
    finally:
        server.close()


def test_music_upload_returns_midi_and_piano_roll(tmp_path):
    import pretty_midi

    song = tmp_path / "song.mid"
    write_song(song, shift=0)
    server = start_server(FIXTURES / "music", max_upload_bytes=100_000, max_new_tokens=3000)
    try:
        info = request(server.url + "/info")[1]
        assert info["prompt"] == "file" and "piano_roll" in info["extra_files"]
        options = json.dumps(
            {
                "prompt_seconds": 1.0,
                "seconds": 2.0,
                "piano_roll": True,
                "temperature": 0.9,
                "seed": 3,
            }
        )
        body, kind = multipart({"file": ("song.mid", song.read_bytes()), "options": options})
        status, answer = request(server.url + "/generate", body, kind)
        assert status == 200, answer
        assert answer["lines"][0].startswith("wrote continuation.mid: 1.0 s of prompt")
        midi_bytes = base64.b64decode(answer["files"]["output"]["base64"])
        midi = pretty_midi.PrettyMIDI(io.BytesIO(midi_bytes))
        assert midi.get_end_time() >= 2.5  # 1 s of prompt + at least 2 s generated
        png = base64.b64decode(answer["files"]["piano_roll"]["base64"])
        assert png.startswith(b"\x89PNG") and answer["files"]["piano_roll"]["media_type"] == (
            "image/png"
        )
        again = request(server.url + "/generate", body, kind)[1]  # seeded: the same music
        assert again["files"]["output"]["base64"] == answer["files"]["output"]["base64"]
        assert "rules all" in answer["lines"][0]
        alone = {**json.loads(options), "rules": "valid"}  # the model alone on note lengths
        valid = multipart({"file": ("song.mid", song.read_bytes()), "options": json.dumps(alone)})
        assert "rules valid" in request(server.url + "/generate", *valid)[1]["lines"][0]
        # uploads at once are decoded together, each what it is alone
        worker, rows = server.app.state.served.worker, []
        step = worker.batch.step
        worker.batch.step = lambda: (step(), rows.append(len(worker.batch)))[0]
        seeded = [
            multipart(
                {
                    "file": ("song.mid", song.read_bytes()),
                    "options": json.dumps(
                        {**json.loads(options), "piano_roll": False, "seed": seed}
                    ),
                }
            )
            for seed in (3, 4, 5)
        ]
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda b: request(server.url + "/generate", *b)[1], seeded))
        assert answers[0]["files"]["output"] == answer["files"]["output"] and max(rows) > 1
        assert len({a["files"]["output"]["base64"] for a in answers}) == 3
        headers = {"Content-Type": kind, "Accept": "audio/midi"}
        raw = urllib.request.Request(server.url + "/generate", body, headers, method="POST")
        with urllib.request.urlopen(raw, timeout=60) as response:  # the MIDI file itself
            assert response.headers["content-type"] == "audio/midi"
            assert response.read() == midi_bytes
        bad = [
            ({"file": ("x.mid", b"not a midi file"), "options": "{}"}, 422, "file"),
            ({"file": ("x.mid", b"x" * 100_001)}, 413, "file"),
            (
                {"file": ("s.mid", song.read_bytes()), "options": '{"seconds": -1}'},
                422,
                "options.seconds",
            ),
            (
                {"file": ("s.mid", song.read_bytes()), "options": '{"rules": "none"}'},
                422,
                "options.rules",
            ),
            (
                {"file": ("s.mid", song.read_bytes()), "options": '{"piano_roll": "/etc/x"}'},
                422,
                "options.piano_roll",
            ),
            (
                {
                    "file": ("s.mid", song.read_bytes()),  # a file the server has: still refused
                    "options": json.dumps({"soundfont": str(song)}),
                },
                422,
                "options.soundfont",
            ),
            (
                {"file": ("s.mid", song.read_bytes()), "options": '{"seconds": 60}'},
                422,
                "options",
            ),  # 60 s may take 12,000 events: over this server's 3,000
            ({"options": "{nope"}, 400, "options"),
        ]
        for fields, expected_status, field in bad:
            body, kind = multipart(fields)
            status, answer = request(server.url + "/generate", body, kind)
            assert (status, answer["field"]) == (expected_status, field), answer
        if "wav" not in info["extra_files"]:  # no FluidSynth here: audio cannot be asked for
            body, kind = multipart(
                {"file": ("s.mid", song.read_bytes()), "options": '{"wav": true}'}
            )
            status, answer = request(server.url + "/generate", body, kind)
            assert (status, answer["field"]) == (422, "options.wav")
            assert "FluidSynth" in answer["error"]
        status, answer = post(server, "a text prompt")
        assert (status, answer["field"]) == (422, "prompt")
        status, answer = post(server, "", seconds=1.0, seed=1)  # from nothing
        assert status == 200 and answer["files"]["output"]["name"].endswith(".mid")
    finally:
        server.close()


def chromium_driver():
    """A headless chromium through Selenium, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not browser or not driver_path:
        pytest.skip("no system chromium and chromedriver (apt install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1000,900",
    ):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_the_page_in_a_real_browser(text_server, text_ckpt, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium_driver()
    try:
        driver.get(text_server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "text task" in d.find_element(By.ID, "meta").text)
        expected = seqgen.load(text_ckpt).generate("the king", temperature=0, max_new_tokens=20)
        prompt = driver.find_element(By.ID, "prompt")
        prompt.send_keys("the king")
        for field, value in (("temperature", "0"), ("max_new_tokens", "20")):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        driver.find_element(By.ID, "submit").click()  # streamed, as the page does by default
        wait.until(
            lambda d: (
                d.find_element(By.ID, "output").text.strip() == ("the king" + expected).strip()
            )
        )
        assert driver.find_element(By.ID, "error").text == ""
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 5_000
    finally:
        driver.quit()


def test_the_page_translates_with_beam_search(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = start_server(FIXTURES / "translation")
    driver = chromium_driver()
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "translation task" in d.find_element(By.ID, "meta").text)
        stream = driver.find_element(By.ID, "stream")
        assert not stream.is_selected() and not stream.is_enabled()  # beam 4: nothing to stream
        expected = seqgen.load(FIXTURES / "translation").generate("a man", max_new_tokens=10)
        assert expected.strip()  # the fixture's (tiny) model answers something
        driver.find_element(By.ID, "prompt").send_keys("a man")
        box = driver.find_element(By.ID, "max_new_tokens")
        box.clear()
        box.send_keys("10")
        driver.find_element(By.ID, "submit").click()
        wait.until(
            lambda d: (
                d.find_element(By.ID, "submit").is_enabled()
                and d.find_element(By.ID, "output").text != "generating..."
            )
        )
        assert driver.find_element(By.ID, "error").text == ""
        assert driver.find_element(By.ID, "output").text == expected.strip()
    finally:
        driver.quit()
        server.close()
