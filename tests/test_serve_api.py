"""`seqgen serve` as people use servers: OpenAI's completions through the official `openai`
client, continuous batching that changes no output, Prometheus metrics, and faults (clients
that leave, requests that time out, keys, hosts, other sites, SIGTERM)."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import seqgen

pytest.importorskip("fastapi", reason="seqgen serve needs pip install 'seqgen[serve]'")
openai = pytest.importorskip("openai", reason="the OpenAI API tests use the official client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from seqgen.serve.config import ServeConfig  # noqa: E402
from seqgen.serve.server import BackgroundServer  # noqa: E402


@pytest.fixture(scope="module")
def server(text_ckpt):
    server = BackgroundServer(
        seqgen.load(text_ckpt), ServeConfig(ckpt=str(text_ckpt), batch_size=4)
    )
    yield server
    server.close()


@pytest.fixture(scope="module")
def generator(text_ckpt):
    return seqgen.load(text_ckpt)


def client(server, **settings) -> "openai.OpenAI":
    return openai.OpenAI(
        base_url=server.url + "/v1",
        api_key=settings.pop("api_key", "none"),
        max_retries=0,
        timeout=60,
        **settings,
    )


def metrics(server) -> dict[str, float]:
    """Every sample of /metrics by its name and labels, parsed by prometheus_client."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return found


def test_openai_client_completions_equal_seqgen_generate(server, generator):
    api = client(server)
    assert [m.id for m in api.models.list().data] == ["text"]
    answer = api.completions.create(model="text", prompt="the king", max_tokens=20, temperature=0)
    expected = generator.generate("the king", temperature=0, max_new_tokens=20)
    assert answer.choices[0].text == expected and answer.object == "text_completion"
    assert answer.usage.prompt_tokens == len(generator.prompt_ids("the king"))
    assert answer.usage.completion_tokens == 20 and answer.choices[0].finish_reason == "length"
    # n samples of a seeded request are seqgen generate --num_samples n --seed s
    sampled = api.completions.create(
        model="text",
        prompt="the",
        max_tokens=15,
        n=3,
        seed=7,
        temperature=0.9,
        extra_body={"top_k": 20},
    )
    expected = generator.generate(
        "the", max_new_tokens=15, num_samples=3, seed=7, temperature=0.9, top_k=20
    )
    assert [c.text for c in sorted(sampled.choices, key=lambda c: c.index)] == expected
    # a list of prompts; a stop string ends an output with finish_reason "stop"
    stop = [expected[0][3:5]]
    many = api.completions.create(
        model="text", prompt=["the king", "the queen"], max_tokens=30, temperature=0, stop=stop
    )
    assert [c.index for c in many.choices] == [0, 1]
    alone = generator.generate("the queen", temperature=0, max_new_tokens=30, stop=stop)
    assert many.choices[1].text == alone


def test_openai_client_streams_and_gives_logprobs(server, generator):
    api = client(server)
    expected = generator.generate("the lord", temperature=0, max_new_tokens=25)
    chunks = list(
        api.completions.create(
            model="text",
            prompt="the lord",
            max_tokens=25,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected and len(chunks) > 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 25
    scored = api.completions.create(
        model="text", prompt="the lord", max_tokens=6, temperature=0, logprobs=3
    )
    logprobs = scored.choices[0].logprobs
    assert "".join(logprobs.tokens) == scored.choices[0].text
    assert len(logprobs.token_logprobs) == 6 and all(lp <= 0 for lp in logprobs.token_logprobs)
    for lp, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert len(top) == 3 and abs(max(top.values()) - lp) < 1e-5  # greedy: the likeliest
    streamed = [
        c.choices[0]
        for c in api.completions.create(
            model="text", prompt="the lord", max_tokens=6, temperature=0, logprobs=3, stream=True
        )
    ]
    assert streamed[-1].logprobs.token_logprobs == logprobs.token_logprobs
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        api.completions.create(model="text", prompt="x", max_tokens=10**6)
    with pytest.raises(openai.UnprocessableEntityError, match="frequency_penalty"):
        api.completions.create(model="text", prompt="x", frequency_penalty=1.0)


def test_seeded_requests_equal_seqgen_generate_however_the_batch_changes(server, generator):
    """Sampled, seeded requests with their own options, stop strings and streaming arrive at
    different moments into a batch of 4 rows (others join and leave around each): every one
    gets what `seqgen generate --seed` gives alone."""
    chosen = [
        ("king", 1, 40, 0.8, None),
        ("fool", 2, 9, 1.2, 30),
        ("queen", 3, 25, 0.5, None),
        ("page", 4, 60, 1.0, 50),
        ("duke", 5, 5, 0.9, None),
        ("lady", 6, 33, 0.7, 10),
        ("knight", 7, 17, 1.1, None),
        ("nurse", 8, 48, 0.6, None),
    ]
    cases = [
        dict(prompt=f"the {w}", seed=s, max_new_tokens=n, temperature=t, top_k=k)
        for w, s, n, t, k in chosen
    ]
    for n, case in enumerate(cases):
        case["stream"] = n % 2 == 1
        if n % 3 == 0:
            case["stop"] = ["\n\n"]
    expected = [
        generator.generate(
            c["prompt"], **{k: v for k, v in c.items() if k not in ("prompt", "stream")}
        )
        for c in cases
    ]

    def ask(n):
        time.sleep(0.02 * n)
        case = dict(cases[n])
        prompt = case.pop("prompt")
        body = json.dumps({"prompt": prompt, "options": case}).encode()
        request = urllib.request.Request(
            server.url + "/generate", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read().decode()
        if not case["stream"]:
            return json.loads(raw)["output"]
        return "".join(
            json.loads(line[6:])["text"]
            for line in raw.splitlines()
            if line.startswith("data: ") and '"text"' in line
        )

    with ThreadPoolExecutor(len(cases)) as pool:
        outputs = list(pool.map(ask, range(len(cases))))
    assert outputs == expected


def test_metrics_and_health(server):
    before = metrics(server)
    answer = client(server).completions.create(
        model="text", prompt="a", max_tokens=7, temperature=0, extra_body={"min_tokens": 7}
    )
    assert answer.usage.completion_tokens == 7
    after = metrics(server)
    assert after["seqgen_generated_tokens_total"] - before["seqgen_generated_tokens_total"] == 7
    ok = "seqgen_requests_total{outcome=ok}"
    assert after[ok] - before.get(ok, 0) == 1
    latency = "seqgen_request_latency_seconds_count"
    assert after[latency] - before[latency] == 1
    assert after["seqgen_time_to_first_token_seconds_count"] >= 1
    assert after["seqgen_queue_depth"] == 0 and after["seqgen_running_rows"] == 0
    with urllib.request.urlopen(server.url + "/health", timeout=30) as response:
        assert json.loads(response.read())["status"] == "ready"


def test_health_says_loading_then_ready_and_routes_wait_for_the_model(text_ckpt, tmp_path):
    broken = BackgroundServer(None, ServeConfig(ckpt=str(tmp_path / "nothing")))
    try:
        deadline = time.monotonic() + 30
        while (status := get(broken.url + "/health"))[1]["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status == (503, {"status": "failed"})
        assert post(broken.url + "/v1/completions", {"prompt": "x"})[0] == 503
    finally:
        broken.close()
    loading = BackgroundServer(None, ServeConfig(ckpt=str(text_ckpt)))
    try:
        while (status := get(loading.url + "/health"))[1]["status"] != "ready":
            assert status == (503, {"status": "loading"})
            time.sleep(0.01)
        assert post(loading.url + "/v1/completions", {"prompt": "x", "max_tokens": 2})[0] == 200
    finally:
        loading.close()


def get(url: str, headers: dict | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw.startswith(b"{") else raw.decode()


def post(url: str, body: dict, headers: dict | None = None):
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_client_that_leaves_mid_stream_frees_its_row(server):
    before = metrics(server)
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps(
        {
            "prompt": "the",
            "options": {"stream": True, "max_new_tokens": 8000, "min_new_tokens": 8000},
        }
    )
    connection.request("POST", "/generate", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()
    deadline = time.monotonic() + 20
    while metrics(server)["seqgen_running_rows"] > 0:  # its row is gone within a few steps
        assert time.monotonic() < deadline, "the abandoned stream kept decoding"
        time.sleep(0.05)
    after = metrics(server)
    cancelled = "seqgen_requests_total{outcome=cancelled}"
    assert after[cancelled] - before.get(cancelled, 0) == 1
    assert after["seqgen_generated_tokens_total"] - before["seqgen_generated_tokens_total"] < 8000


def test_a_request_past_its_timeout_is_cancelled_with_504(text_ckpt):
    server = BackgroundServer(
        seqgen.load(text_ckpt), ServeConfig(ckpt=str(text_ckpt), request_timeout=0.5)
    )
    try:
        options = {"max_new_tokens": 8000, "min_new_tokens": 8000}
        status, answer = post(server.url + "/generate", {"prompt": "the", "options": options})
        assert status == 504 and "0.5 s" in answer["error"]
        deadline = time.monotonic() + 20
        while metrics(server)["seqgen_running_rows"] > 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert metrics(server)["seqgen_requests_total{outcome=timeout}"] == 1
        assert post(server.url + "/generate", {"prompt": "the"})[0] == 200  # still serving
    finally:
        server.close()


def test_api_key_host_and_other_sites(text_ckpt):
    server = BackgroundServer(
        seqgen.load(text_ckpt), ServeConfig(ckpt=str(text_ckpt), api_key="s3cret")
    )
    try:
        assert get(server.url + "/health")[0] == 200  # open
        assert post(server.url + "/generate", {"prompt": "a"})[0] == 401
        wrong = {"Authorization": "Bearer nope"}
        assert post(server.url + "/generate", {"prompt": "a"}, wrong)[0] == 401
        with pytest.raises(openai.AuthenticationError):
            client(server).completions.create(model="text", prompt="a", max_tokens=2)
        answer = client(server, api_key="s3cret").completions.create(
            model="text", prompt="a", max_tokens=2
        )
        assert answer.usage.completion_tokens <= 2
        key = {"Authorization": "Bearer s3cret"}
        status, answer = post(
            server.url + "/generate", {"prompt": "a"}, {**key, "Host": "evil.example:8000"}
        )  # DNS rebinding
        assert status == 403 and "Host" in answer["error"]
        for site in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            assert post(server.url + "/generate", {"prompt": "a"}, {**key, **site})[0] == 403
        same = {"Origin": server.url, **key}  # the page itself
        assert post(server.url + "/generate", {"prompt": "a"}, same)[0] == 200
    finally:
        server.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_checkpoint_that_cannot_load_stops_seqgen_serve_with_its_error(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqgen.cli",
            "serve",
            "--ckpt",
            str(tmp_path / "nothing"),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    last = result.stderr.splitlines()[-1]
    assert result.returncode == 2 and "nothing: no such checkpoint" in last
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_sigterm_finishes_the_running_stream_and_exits_0(text_ckpt):
    """`seqgen serve` on all interfaces without a key warns; on SIGTERM it takes no new
    request, lets the running stream finish and exits 0."""
    port = free_port()
    env = {**os.environ, "SEQGEN_LOG": "INFO", "SEQGEN_API_KEY": ""}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seqgen.cli",
            "serve",
            "--ckpt",
            str(text_ckpt),
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--shutdown_seconds",  # room for the stream to finish on a loaded machine
            "150",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline
            try:
                if get(url + "/health")[1]["status"] == "ready":
                    break
            except OSError:
                pass
            time.sleep(0.1)
        received, started = [], threading.Event()

        def stream() -> None:
            options = {"stream": True, "max_new_tokens": 2000, "min_new_tokens": 2000}
            request = urllib.request.Request(
                url + "/generate",
                json.dumps({"prompt": "the", "options": options}).encode(),
                {"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                received.append(response.readline().decode())
                started.set()
                received.append(response.read().decode())

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(30)
        process.send_signal(signal.SIGTERM)  # while the stream runs
        reader.join(180)
        assert process.wait(180) == 0
        events = "".join(received)
        assert events.rstrip().endswith("event: done\ndata: {}") and "error" not in events
        assert events.count('"text"') > 100  # the whole stream, not cut at the signal
    finally:
        if process.poll() is None:
            process.kill()
        log = process.stderr.read()
    assert "without an API key" in log


def test_a_failing_model_answers_without_details_and_the_server_recovers(text_ckpt):
    server = BackgroundServer(seqgen.load(text_ckpt), ServeConfig(ckpt=str(text_ckpt)))
    generator = server.app.state.served.generator
    forward, calls = generator.model.forward, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("out of memory at /srv/secret/path")
        return forward(*args, **kwargs)

    generator.model.forward = failing
    try:
        body = {"prompt": "the", "options": {"stream": True, "max_new_tokens": 50}}
        request = urllib.request.Request(
            server.url + "/generate",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            events = response.read().decode()
        assert "event: error" in events and "internal error (RuntimeError)" in events
        assert "/srv/secret" not in events and events.rstrip().endswith("event: done\ndata: {}")
        assert post(server.url + "/generate", {"prompt": "the"})[0] == 200  # a fresh batch
        assert metrics(server)["seqgen_requests_total{outcome=error}"] == 1
    finally:
        server.close()


def test_responsive_under_bad_requests_and_connections_bounded(text_ckpt):
    """Bad requests in a flood are each a quick 4xx while /health and a good request are
    answered; past --max_connections, uvicorn answers 503."""
    server = BackgroundServer(
        seqgen.load(text_ckpt), ServeConfig(ckpt=str(text_ckpt), max_connections=12)
    )
    bad = [
        {"prompt": "a", "options": {"num_beams": 5000, "max_new_tokens": 3}},
        {"prompt": "a", "options": {"stop": ["x"] * 9}},
        {"prompt": "a", "options": {"max_new_tokens": 10**9}},
    ]
    try:
        with ThreadPoolExecutor(8) as pool:
            flood = [pool.submit(post, server.url + "/generate", bad[n % 3]) for n in range(200)]
            started = time.monotonic()
            assert get(server.url + "/health")[0] == 200
            assert post(server.url + "/generate", {"prompt": "the"})[0] == 200
            assert time.monotonic() - started < 10
            assert {f.result()[0] for f in flood} == {422}
        host, port = server.url.removeprefix("http://").split(":")
        streams, body = (
            [],
            json.dumps(
                {
                    "prompt": "the",
                    "options": {"stream": True, "max_new_tokens": 8000, "min_new_tokens": 8000},
                }
            ),
        )
        for _ in range(20):  # hold connections open until the server refuses one
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            connection.request("POST", "/generate", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            streams.append(connection)
            if response.status != 200:
                break
        assert response.status == 503 and len(streams) <= 12
        for connection in streams:
            connection.close()
        deadline = time.monotonic() + 20
        while get(server.url + "/health")[0] != 200:  # the left streams are cancelled
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        server.close()
