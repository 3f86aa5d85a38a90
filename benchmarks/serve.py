"""Load on `seqgen serve` over the loopback, side by side in one run: the same mixed workload
against
- continuous batching (the default);
- static batching as the server before continuous batching did it (`--previous`, the
  commit run from a `git archive` of it: requests with equal options decoded together to
  the end of the batch; seeded, streamed and stopped ones alone);
- static batching of any options (`--batching static`: the batch takes no request until all
  of it has ended), the stronger baseline;
- one request at a time (`--batch_size 1`).

    python -m benchmarks.serve --ckpt runs/demo --report runs/bench/serve.json

Each mode is a `seqgen serve` process of its own (the clients' threads do not share its
interpreter). `--clients` clients send `--requests` requests to `/v1/completions` in all,
each as soon as its last is answered. The workload, fixed by `--seed`: prompts of 8-256
tokens (slices of the packaged Shakespeare sample), 8-256 new tokens each; a quarter
streamed, a third sampled with a seed (temperature 0.8, top_k 50), the rest greedy; a fifth
with a stop string. Reports requests/s, output tokens/s and p50/p99 time to first token
(streamed requests) and latency, per mode; `errors`; and whether every greedy or seeded
output equals the one-at-a-time output of the same request (`mismatched_outputs`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any

from benchmarks.common import machine, parse_args, write_report
from seqgen.inference import load
from seqgen.tables import markdown_table

MODES = {
    "continuous": [],
    "static": [],
    "static_any_options": ["--batching", "static"],
    "one_at_a_time": [],
}
PREVIOUS = "62ce79a"  # the last commit whose server batched statically


def workload(tokenizer, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` completions requests, the same for every mode."""
    rng = random.Random(seed)
    ids = tokenizer.encode(files("seqgen").joinpath("assets/shakespeare_sample.txt").read_text())
    requests = []
    for n in range(count):
        length = rng.randint(8, 256)
        start = rng.randrange(0, len(ids) - length)
        body = {
            "prompt": tokenizer.decode(ids[start : start + length]),
            "max_tokens": rng.randint(8, 256),
            "temperature": 0,
        }
        if n % 3 == 1:
            body.update(temperature=0.8, top_k=50, seed=rng.randrange(2**31))
        if n % 4 == 2:
            body.update(stream=True)
        if n % 5 == 3:
            body.update(stop=["\n\n"])
        requests.append(body)
    return requests


def complete(port: int, body: dict[str, Any], native: bool = False) -> dict[str, Any]:
    """One request: its text, tokens, time to first token and latency (or its error);
    `native`: through POST /generate (the previous server has no /v1)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        path, payload = ("/generate", _native(body)) if native else ("/v1/completions", body)
        connection.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            return {"error": f"{response.status} {response.read()[:200]!r}"}
        if native:
            return _native_answer(response, body, started)
        if not body.get("stream"):
            answer = json.loads(response.read())
            latency = time.perf_counter() - started
            return {
                "text": answer["choices"][0]["text"],
                "latency": latency,
                "tokens": answer["usage"]["completion_tokens"],
            }
        text, first, pieces = [], None, 0
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            for choice in chunk["choices"]:
                if choice["text"]:
                    first = first or time.perf_counter() - started
                    text.append(choice["text"])
                    pieces += 1
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
        return {
            "text": "".join(text),
            "ttft": first,
            "latency": time.perf_counter() - started,
            "tokens": tokens,
        }
    except (OSError, ValueError, KeyError) as err:
        return {"error": repr(err)}
    finally:
        connection.close()


def _native(body: dict[str, Any]) -> dict[str, Any]:
    """A completions request as POST /generate takes it."""
    options = {"max_new_tokens": body["max_tokens"], "temperature": body["temperature"]}
    options.update({k: body[k] for k in ("top_k", "seed", "stop", "stream") if k in body})
    return {"prompt": body["prompt"], "options": options}


def _native_answer(response, body: dict[str, Any], started: float) -> dict[str, Any]:
    if not body.get("stream"):
        text = json.loads(response.read())["output"]
        return {"text": text, "latency": time.perf_counter() - started}
    pieces, first = [], None
    for line in response:
        if line.startswith(b"event: error"):
            return {"error": "an error event"}
        if line.startswith(b"data: ") and b'"text"' in line:
            first = first or time.perf_counter() - started
            pieces.append(json.loads(line[6:])["text"])
    return {"text": "".join(pieces), "ttft": first, "latency": time.perf_counter() - started}


def run_mode(
    args: argparse.Namespace, mode: str, requests: list[dict], source: Path | None = None
) -> dict[str, Any]:
    """Start `seqgen serve` for `mode` (from the code in `source`, where given), send the
    workload from `--clients` threads, stop it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    batch = "1" if mode == "one_at_a_time" else str(args.batch_size)
    command = [
        sys.executable,
        "-m",
        "seqgen.cli",
        "serve",
        "--ckpt",
        str(Path(args.ckpt).resolve()),
        "--port",
        str(port),
        "--batch_size",
        batch,
        "--max_queue",
        str(args.clients),
        *MODES[mode],
    ]
    env = {**os.environ, "SEQGEN_API_KEY": ""}
    if source is not None:  # its seqgen and seqgen_tasks before the installed ones
        env["PYTHONPATH"] = str(source)
    server = subprocess.Popen(command, env=env, cwd=source)
    native = source is not None
    try:
        _wait_ready(server, port)
        complete(port, {**requests[0], "stream": False}, native)  # warm up
        for body in requests:
            body["stream_options"] = {"include_usage": True} if body.get("stream") else None
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda body: complete(port, body, native), requests))
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(60)
    done = [r for r in results if "error" not in r]
    latencies = sorted(r["latency"] for r in done)
    ttfts = sorted(r["ttft"] for r in done if r.get("ttft") is not None)
    return {
        "requests": len(results),
        "errors": len(results) - len(done),
        "error_examples": [r["error"] for r in results if "error" in r][:3],
        "requests_per_second": len(done) / wall,
        "tokens": [r.get("tokens") for r in results],
        "p50_latency_seconds": _quantile(latencies, 0.5),
        "p99_latency_seconds": _quantile(latencies, 0.99),
        "p50_ttft_seconds": _quantile(ttfts, 0.5),
        "p99_ttft_seconds": _quantile(ttfts, 0.99),
        "wall_seconds": wall,
        "outputs": [r.get("text") for r in results],
    }


def previous_source(commit: str, folder: Path) -> Path:
    """The code of `commit` (this repository's), unpacked into `folder`, with `tasks/` also
    importable as `seqgen_tasks` as its installed package is."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "archive", commit], cwd=repo, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "seqgen_tasks").symlink_to("tasks")
    return folder


def _wait_ready(server: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"seqgen serve exited with {server.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("seqgen serve was not ready within 120 s")


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default="runs/demo", help="Checkpoint to serve (make demo).")
    parser.add_argument("--clients", type=int, default=32, help="Concurrent clients.")
    parser.add_argument("--requests", type=int, default=128, help="Requests in all.")
    parser.add_argument("--batch_size", type=int, default=16, help="Rows of a batch.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the workload.")
    parser.add_argument(
        "--previous",
        default=PREVIOUS,
        help="Commit whose server is the static baseline (none: skip it).",
    )
    parser.add_argument("--report", help="Write the JSON report here.")
    args = parse_args(parser, argv)
    requests = workload(load(args.ckpt).tokenizer, args.requests, args.seed)
    modes = {}
    with tempfile.TemporaryDirectory(prefix="seqgen-previous-") as tmp:
        for mode in MODES:
            if mode == "static":
                if args.previous == "none":
                    continue
                source = previous_source(args.previous, Path(tmp))
                modes[mode] = run_mode(args, mode, [dict(r) for r in requests], source)
            else:
                modes[mode] = run_mode(args, mode, [dict(r) for r in requests])
    reference = modes["one_at_a_time"]
    checked = [n for n, body in enumerate(requests) if body["temperature"] == 0 or "seed" in body]
    mismatched = {
        mode: sum(modes[mode]["outputs"][n] != reference["outputs"][n] for n in checked)
        for mode in modes
        if mode != "one_at_a_time"
    }
    for mode in modes.values():  # every output is the reference's: so are its tokens
        tokens = sum(
            t or 0
            for t, text in zip(reference["tokens"], mode["outputs"], strict=True)
            if text is not None
        )
        mode["tokens_per_second"] = tokens / mode["wall_seconds"]
        del mode["outputs"], mode["tokens"]
    baseline = "static" if "static" in modes else "static_any_options"
    report = {
        "machine": machine(),
        "checkpoint": args.ckpt,
        "clients": args.clients,
        "requests": args.requests,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "previous": args.previous,
        **modes,
        "continuous_vs_static": (
            modes["continuous"]["tokens_per_second"] / modes[baseline]["tokens_per_second"]
        ),
        "continuous_vs_static_any_options": (
            modes["continuous"]["tokens_per_second"]
            / modes["static_any_options"]["tokens_per_second"]
        ),
        "continuous_vs_one_at_a_time": (
            modes["continuous"]["tokens_per_second"] / modes["one_at_a_time"]["tokens_per_second"]
        ),
        "p99_ttft_seconds": modes["continuous"]["p99_ttft_seconds"],
        "errors": sum(mode["errors"] for mode in modes.values()),
        "checked_outputs": len(checked),
        "mismatched_outputs": mismatched,
    }
    print(
        f"\nseqgen serve, {args.requests} mixed completions from {args.clients} concurrent "
        f"clients over the loopback (batch of {args.batch_size})"
    )
    print(
        markdown_table(
            ["mode", "requests/s", "tokens/s", "p50 / p99 TTFT s", "p50 / p99 latency s", "errors"],
            [
                (
                    name,
                    f"{m['requests_per_second']:.2f}",
                    f"{m['tokens_per_second']:.0f}",
                    f"{_shown(m['p50_ttft_seconds'])} / {_shown(m['p99_ttft_seconds'])}",
                    f"{m['p50_latency_seconds']:.2f} / {m['p99_latency_seconds']:.2f}",
                    m["errors"],
                )
                for name, m in modes.items()
            ],
        )
    )
    print(
        f"continuous batching: {report['continuous_vs_static']:.2f}x the tokens/s of "
        f"{baseline}, {report['continuous_vs_static_any_options']:.2f}x static_any_options, "
        f"{report['continuous_vs_one_at_a_time']:.2f}x one at a time; {len(checked)} greedy "
        f"or seeded outputs checked against one at a time, mismatched: {mismatched}"
    )
    write_report(args.report, report)
    return 1 if report["errors"] or any(mismatched.values()) else 0


def _shown(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


if __name__ == "__main__":
    sys.exit(main())
