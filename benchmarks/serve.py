"""Load on `seqgen serve`, loopback only, side by side in one run: the same requests against
the server decoding compatible requests together (`--batch_size`, the default 16) and one at
a time (batch_size 1).

    python -m benchmarks.serve --ckpt runs/demo --report runs/bench/serve.json

`--clients` threads send `--requests` greedy requests in all (distinct prompts, so nothing is
cached; `--new_tokens` each) as fast as answers come back. Reports requests/s, p50 and p95
latency, errors (must be 0) and the speed-up of batched serving. The clients share the
server's process and cores: both modes pay that equally.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import machine, parse_args, write_report
from seqgen.inference import load
from seqgen.serve import ServeConfig
from seqgen.serve_app import BackgroundServer
from seqgen.tables import markdown_table

WORDS = "king queen lord lady duke fool knight page friar nurse".split()


def one_request(url: str, prompt: str, new_tokens: int) -> tuple[float, bool]:
    """(seconds, succeeded) of one greedy request."""
    options = {"temperature": 0, "max_new_tokens": new_tokens}
    body = json.dumps({"prompt": prompt, "options": options}).encode()
    request = urllib.request.Request(url + "/generate", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            ok = response.status == 200 and "output" in json.loads(response.read())
    except (urllib.error.URLError, OSError):
        ok = False
    return time.perf_counter() - started, ok


def load_test(generator, ckpt: str, batch_size: int, args: argparse.Namespace) -> dict:
    config = ServeConfig(ckpt=ckpt, batch_size=batch_size, max_queue=max(32, args.clients))
    server = BackgroundServer(generator, config)
    prompts = [f"{WORDS[n % len(WORDS)].upper()} {n}:" for n in range(args.requests)]
    try:
        one_request(server.url, "warm up", args.new_tokens)
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda p: one_request(server.url, p, args.new_tokens),
                                    prompts))  # fmt: skip
        wall = time.perf_counter() - started
        batches = server.worker.batches[1:]  # after the warm-up
    finally:
        server.close()
    latencies = sorted(seconds for seconds, _ in results)
    return {
        "requests": len(results),
        "errors": sum(not ok for _, ok in results),
        "requests_per_second": len(results) / wall,
        "p50_seconds": statistics.median(latencies),
        "p95_seconds": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "wall_seconds": wall,
        "mean_batch": statistics.mean(batches) if batches else 0.0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default="runs/demo", help="Checkpoint to serve (make demo).")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients.")
    parser.add_argument("--requests", type=int, default=96, help="Requests in all.")
    parser.add_argument("--new_tokens", type=int, default=48, help="Tokens per answer.")
    parser.add_argument("--batch_size", type=int, default=16, help="Batched mode's batch.")
    parser.add_argument("--report", help="Write the JSON report here.")
    args = parse_args(parser, argv)
    generator = load(args.ckpt)
    modes = {"batched": load_test(generator, args.ckpt, args.batch_size, args),
             "one at a time": load_test(generator, args.ckpt, 1, args)}  # fmt: skip
    report = {
        "machine": machine(), "checkpoint": args.ckpt, "clients": args.clients,
        "new_tokens": args.new_tokens, "modes": modes,
        "errors": sum(mode["errors"] for mode in modes.values()),
        "batched_speedup": (modes["batched"]["requests_per_second"]
                            / modes["one at a time"]["requests_per_second"]),
    }  # fmt: skip
    print(f"\nseqgen serve, {args.requests} greedy requests of {args.new_tokens} tokens from "
          f"{args.clients} concurrent clients, loopback")  # fmt: skip
    print(markdown_table(
        ["mode", "requests/s", "p50 s", "p95 s", "mean batch", "errors"],
        [(name, f"{m['requests_per_second']:.2f}", f"{m['p50_seconds']:.2f}",
          f"{m['p95_seconds']:.2f}", f"{m['mean_batch']:.1f}", m["errors"])
         for name, m in modes.items()],
    ))  # fmt: skip
    print(f"batched serving: {report['batched_speedup']:.2f}x the requests/s of one at a time")
    write_report(args.report, report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
