"""Decoding speed of a randomly initialised gpt2-shaped model (124M), side by side:
seqgen (KV cache) vs Hugging Face `generate` on the same weights, vs a no-cache loop,
bf16 vs fp32, int8 weights vs fp32, batch 8 vs batch 1, and the fraction of the
memory-bandwidth bound.

    python -m benchmarks.generate --report runs/bench/generate.json

Batch-1 greedy decoding of `--new_tokens` tokens after a `--prompt_tokens` prompt, fp32,
unless the row says otherwise. seqgen rows use the Linear kernels that `seqgen.load` and
`seqgen generate` time fastest on this CPU at load (seqgen/cpu.py); the kernel rows force one
for single rows (plain nn.Linear, oneDNN-packed, the compiled product). Each figure is the
median of `--repeats` timed runs after one warm-up run. The no-cache loop at 512 new tokens
would take many minutes, so it is timed at `--no_cache_samples` context lengths spread over
the run and integrated (trapezoid rule); `--exact_no_cache` times the whole loop instead.
`--model` picks another preset's shape.

The fp32, bf16 and int8 rows (batch 1 and batch `--batch`) are timed in turns with one another,
with fp32 and bf16 on the same kernels but every block run as written (`fused_speedup`: what
seqgen/fused.py gains where one row runs the compiled product), and with a read of 1 GiB of
memory (the fastest of three readers), so that the speedups and the fractions of the bandwidth
bound (the bytes a token reads over its time, against the read bandwidth) compare moments
alike: the machine's speed drifts within a run. int8 quantizes the
same weights as `--quantize int8` does (seqgen/quantize.py); its bytes are the int8 weights,
their scales, the fp32 biases and norms. With `--bpb_ckpt CKPT --bpb_text FILE`,
`int8_bpb_delta` is the relative change in bits per byte of that checkpoint on that held-out
text (`seqgen evaluate --quantize int8` against fp32). The bf16 model keeps its keys and values
in float32 where that attends faster on this CPU, as decoding decides (`cache_dtype_bf16`).

The many-prompts rows decode `--many_prompts` prompts of mixed lengths (8-48 ids), each with its
own budget of 4-64 new ids, greedy, fp32, `--batch` prompts at a time: batches one after another
(each as long as its longest row; finished rows leave it) against continuous batching (a row
that ends makes room for the next prompt at once); both must give the same outputs.

The beam rows decode `--beam_prompts` prompts of 4-40 ids with 4 beams each, one prompt at a
time against all batched; `beam_products_bound` is what the batched side would reach were it
nothing but its products (every Linear over 4 rows a prompt, one pass a new id, on the model's
kernels, `beam_products_gflops`): past that, its fp32 arithmetic holds it, not the code around.
`beam_ratio_at_bounds` is the ratio were both sides at their bounds: one prompt at a time
reading every weight once a new id at the read bandwidth (its 4 rows share the read), the
batched side its products alone. It is this CPU's arithmetic against its memory: a one-prompt
side faster than now (which users want) lowers `beam_batched_speedup` towards it.

The MBR rows decode as the WikiSum benchmark does: a randomly initialised model of its recipe's
shape, `--mbr_prompts` prompts of 384 ids, 16 samples each at temperature 0.7 and top-p 0.9,
4-gram ban, 256 new ids (its `--min_new_tokens`), the consensus by ROUGE-2 + ROUGE-Lsum over
the samples written as words. One prompt at a time with rouge-score pair by pair (the
straightforward path) against all prompts' samples batched and `RougeSimilarity.matrix`; both
must choose the same samples.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from benchmarks.common import parse_args, write_report
from seqgen.cli import main as seqgen_main
from seqgen.config import PRESETS, ModelConfig
from seqgen.cpu import (
    InferenceLinear,
    cache_dtype,
    compiled_available,
    fast_linears,
    packing_available,
)
from seqgen.generation.engine import generate
from seqgen.inference import consensus
from seqgen.interop.hf import hf_config, to_hf_state_dict
from seqgen.model import GPT
from seqgen.quantize import quantize_int8
from seqgen.timing import seconds_in_turns
from seqgen_tasks.summarization.rouge import RougeSimilarity

MBR_SHAPE = dict(n_layer=4, n_head=4, n_embd=256, block_size=768, vocab_size=4000)  # WikiSum's
MBR_SAMPLING = dict(temperature=0.7, top_p=0.9, no_repeat_ngram_size=4, seed=0)


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fastest_reader(buffer: torch.Tensor) -> Callable[[], object]:
    """The fastest of three ways to read `buffer` once (on an AMD Zen 4 with 2 threads `sum`
    read at 30 GB/s while `amax` read at 48, minutes apart at 50 and 32)."""
    readers = (torch.sum, torch.amax, lambda b: torch.dot(b, b))
    return min((partial(reader, buffer) for reader in readers), key=lambda read: timed(read, 3))


@torch.inference_mode()
def no_cache_seconds(
    model: GPT, prompt: list[int], new_tokens: int, samples: int, exact: bool
) -> float:
    """Seconds for a greedy loop that recomputes the whole sequence at every step."""
    if exact:

        def loop() -> None:
            ids = torch.tensor([prompt])
            for _ in range(new_tokens):
                next_id = model(ids)[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, next_id], dim=1)

        return timed(loop, 1)
    lengths = [len(prompt) + round(i * (new_tokens - 1) / (samples - 1)) for i in range(samples)]
    per_step = []
    for length in lengths:
        ids = torch.randint(0, model.config.vocab_size, (1, length))
        per_step.append(timed(lambda ids=ids: model(ids)[:, -1].argmax(-1), 2))
    # integrate the per-step time over every context length the loop passes through
    total = sum(
        (per_step[i] + per_step[i + 1]) / 2 * (lengths[i + 1] - lengths[i])
        for i in range(len(lengths) - 1)
    )
    return total + per_step[-1]


def as_text(ids: list[int]) -> str:
    """Ids as words of a 300-word vocabulary, a sentence ending after every 20th id on
    average, so that samples share words and sentences as summaries of one article do (a
    sentence starts with a capital: the splitter ends one at a full stop before a capital)."""
    words = []
    for position, i in enumerate(ids):
        starts = position == 0 or ids[position - 1] % 20 == 0
        words.append(("W" if starts else "w") + str(i % 300) + ("." if i % 20 == 0 else ""))
    return " ".join(words)


def products_seconds(model: GPT, rows: int, repeats: int) -> tuple[float, int]:
    """Median seconds of one pass of every Linear of `model` (on the kernels it runs) over
    `rows` rows, and the multiply-adds a row of that pass does."""
    linears = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, InferenceLinear))]
    inputs = [torch.randn(rows, 1, linear.in_features) for linear in linears]

    def run() -> None:
        for linear, x in zip(linears, inputs, strict=True):
            linear(x)

    with torch.inference_mode():
        seconds = timed(run, repeats)
    return seconds, sum(linear.in_features * linear.out_features for linear in linears)


@contextmanager
def clocked(times: dict[str, float], key: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    times[key] += time.perf_counter() - started


def mbr_timings(
    prompts: list[list[int]], samples: int, batch: int, new_tokens: int
) -> dict[str, float]:
    """Seconds of the straightforward and the batched MBR path (generation and consensus
    apart); raises if they choose differently."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**MBR_SHAPE)).eval()
    fast_linears(model)
    sampling = dict(MBR_SAMPLING, max_new_tokens=new_tokens)
    similarity = RougeSimilarity()
    pair_by_pair = lambda a, b: similarity(a, b)  # noqa: E731  (a plain callable)
    times = dict.fromkeys(
        ("generate_one", "consensus_pairs", "generate_batched", "consensus_matrix"), 0.0
    )
    chosen_one = []
    for p, prompt in enumerate(prompts):
        with clocked(times, "generate_one"):
            outputs = generate(
                model,
                [prompt] * samples,
                sample_ids=range(p * samples, (p + 1) * samples),
                **sampling,
            )
        texts = [as_text(o) for o in outputs]
        with clocked(times, "consensus_pairs"):
            chosen_one.append(texts[consensus(texts, pair_by_pair)])
    rows = [prompts[i // samples] for i in range(len(prompts) * samples)]
    with clocked(times, "generate_batched"):  # as Generator.generate_mbr does
        outputs = generate(model, rows, batch_size=batch, **sampling)
    chosen = []
    for start in range(0, len(outputs), samples):
        texts = [as_text(o) for o in outputs[start : start + samples]]
        with clocked(times, "consensus_matrix"):
            chosen.append(texts[consensus(texts, similarity)])
    if chosen != chosen_one:
        raise SystemExit("batched MBR chose other samples than one prompt at a time")
    return times


def many_prompts_timings(model: GPT, count: int, batch: int) -> dict[str, float]:
    """Seconds for `count` prompts of mixed lengths and budgets decoded `batch` at a time,
    batches one after another vs continuous batching; raises if their outputs differ."""
    order = sorted(range(count), key=lambda i: (13 * i) % 41)  # by length, as generate_many
    prompts = [
        torch.randint(0, model.config.vocab_size, (8 + (13 * i) % 41,)).tolist() for i in order
    ]
    limits = [4 + (29 * i) % 61 for i in order]
    found: dict[str, list] = {"batches": []}

    def batches() -> None:
        found["batches"] = []
        for start in range(0, count, batch):
            found["batches"] += generate(
                model, prompts[start : start + batch], limits[start : start + batch], temperature=0
            )

    def continuous() -> None:
        found["continuous"] = generate(model, prompts, limits, batch_size=batch, temperature=0)

    times = {"batches": timed(batches, 1), "continuous": timed(continuous, 1)}
    if found["batches"] != found["continuous"]:
        raise SystemExit("continuous batching gave other outputs than batches one by one")
    times["new_tokens"] = sum(map(len, found["continuous"]))
    return times


def transformers_rows(
    plain: GPT, prompts: list[list[int]], n: int, repeats: int
) -> dict[str, float]:
    """Tokens/s of transformers' generate() on the same weights, batch 1 (the first prompt)
    and all prompts. Its model is freed on return: gigabytes held while the later rows run
    slowed their large allocations (batched beam search by up to a third)."""
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: skipping the Hugging Face rows", file=sys.stderr)
        return {}
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(plain.config)))
    hf.load_state_dict(to_hf_state_dict(plain), strict=False)
    hf.eval()

    def theirs(ids: torch.Tensor) -> None:
        with torch.inference_mode():
            hf.generate(
                ids,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
                use_cache=True,
            )

    first, every = torch.tensor(prompts[:1]), torch.tensor(prompts)
    return {
        "transformers fp32, generate()": n / timed(lambda: theirs(first), repeats),
        f"transformers fp32, generate(), batch {len(prompts)}": len(prompts)
        * n
        / timed(lambda: theirs(every), repeats),
    }


def int8_bpb_delta(ckpt: str | None, text: str | None) -> float | None:
    """The relative change in bits per byte of the text checkpoint `ckpt` on `text` with int8
    weights (None without them)."""
    if not (ckpt and text):
        return None
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for quantize in ("none", "int8"):
            report = f"{tmp}/{quantize}.json"
            argv = ["evaluate", "--ckpt", ckpt, "--data", text, "--quantize", quantize]
            if seqgen_main([*argv, "--report", report]) != 0:
                raise SystemExit(f"seqgen evaluate --ckpt {ckpt} --data {text} failed")
            found[quantize] = json.loads(Path(report).read_text())["bits_per_byte"]
    return (found["int8"] - found["none"]) / found["none"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2", choices=sorted(PRESETS), help="model shape")
    parser.add_argument("--prompt_tokens", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--no_cache_tokens", type=int, default=512)
    parser.add_argument("--no_cache_samples", type=int, default=5)
    parser.add_argument("--exact_no_cache", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--beam_prompts", type=int, default=48, help="prompts of mixed lengths for the beam-4 rows"
    )
    parser.add_argument("--beam_new_tokens", type=int, default=24)
    parser.add_argument(
        "--many_prompts",
        type=int,
        default=96,
        help="prompts of mixed lengths and budgets for the continuous rows",
    )
    parser.add_argument(
        "--mbr_prompts",
        type=int,
        default=4,
        help="prompts for the MBR rows (16 samples each, batched 32)",
    )
    parser.add_argument("--mbr_prompt_tokens", type=int, default=384)
    parser.add_argument("--mbr_new_tokens", type=int, default=256)
    parser.add_argument("--bpb_ckpt", help="a text checkpoint for int8_bpb_delta")
    parser.add_argument("--bpb_text", help="held-out text for int8_bpb_delta")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--report", help="write the results as JSON here")
    args = parse_args(parser, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset(args.model)).eval()
    prompt = torch.randint(0, model.config.vocab_size, (args.prompt_tokens,)).tolist()
    n = args.new_tokens

    plain = model
    model = copy.deepcopy(plain)
    chosen = fast_linears(model)  # as seqgen.load decides: the kernels timed fastest here
    by_kernel = {}
    for kernel in ("packed", "compiled") if packing_available(plain) else ():
        if kernel == "compiled" and not compiled_available("cpu"):
            print("no C++ compiler for TorchInductor: no compiled row", file=sys.stderr)
            continue
        by_kernel[kernel] = copy.deepcopy(plain)
        fast_linears(by_kernel[kernel], (kernel, "packed", "packed"))

    others = [
        torch.randint(0, model.config.vocab_size, (args.prompt_tokens,)).tolist()
        for _ in range(args.batch - 1)
    ]

    def ours(m=model, batch=1, new=n):
        # a batch of different prompts: copies of one would share its keys and values
        prompts = [prompt, *others[: batch - 1]] if batch > 1 else prompt
        generate(m, prompts, new, temperature=0)

    rows = {}
    rows["seqgen fp32, KV cache, plain nn.Linear"] = n / timed(lambda: ours(m=plain), args.repeats)
    for kernel, weights in by_kernel.items():
        rows[f"seqgen fp32, KV cache, {kernel} (one row)"] = n / timed(
            partial(ours, m=weights), args.repeats
        )
    by_kernel.clear()  # freed once their rows are done: see transformers_rows for why
    rows |= transformers_rows(plain, [prompt, *others[: args.batch - 1]], n, args.repeats)
    m = args.no_cache_tokens
    rows[f"seqgen fp32, KV cache, {m} new"] = m / timed(lambda: ours(new=m), 1)
    rows[f"no-cache loop fp32, {m} new"] = m / no_cache_seconds(
        model, prompt, m, args.no_cache_samples, args.exact_no_cache
    )
    bf16 = copy.deepcopy(plain).to(torch.bfloat16)
    chosen_bf16 = fast_linears(bf16)
    # the same kernels with every block run as written (seqgen/fused.py fuses its one-row step)
    unfused = {"fp32": copy.deepcopy(plain), "bf16": copy.deepcopy(plain).to(torch.bfloat16)}
    for weights, kernels in zip(unfused.values(), (chosen, chosen_bf16), strict=True):
        fast_linears(weights, kernels, fuse=False)
    int8 = copy.deepcopy(plain)
    int8_kernel = quantize_int8(int8)
    int8_bytes = sum(
        t.numel() * t.element_size()
        for name, t in int8.state_dict().items()
        if not name.startswith(("transformer.wte", "transformer.wpe"))  # a row per token
    )
    # The decoders and a read of memory in turns: this machine's speed drifts over a run by
    # more than the gaps between them (an AMD Zen 4 read 31-55 GB/s within minutes).
    buffer = torch.ones(2**28)  # 1 GiB, far larger than the caches
    buffer_bytes = buffer.numel() * buffer.element_size()
    paired = {
        f"{kind}, batch {batch}": partial(ours, m=weights, batch=batch)
        for batch in (1, args.batch)
        for kind, weights in (("fp32", model), ("bf16", bf16), ("int8", int8))
    } | {f"{kind} unfused, batch 1": partial(ours, m=weights) for kind, weights in unfused.items()}
    paired["read"] = fastest_reader(buffer)
    in_turns = seconds_in_turns(paired, args.repeats)
    del bf16, int8, buffer, unfused
    seconds = {name: statistics.median(times) for name, times in in_turns.items()}
    bandwidth = buffer_bytes / seconds.pop("read")
    for kind in ("fp32", "bf16", "int8"):
        name = "int8 weights" if kind == "int8" else kind
        rows[f"seqgen {name}, KV cache"] = n / seconds[f"{kind}, batch 1"]
        rows[f"seqgen {name}, KV cache, batch {args.batch}"] = (
            args.batch * n / seconds[f"{kind}, batch {args.batch}"]
        )
    for kind in ("fp32", "bf16"):
        rows[f"seqgen {kind}, KV cache, blocks unfused"] = n / seconds[f"{kind} unfused, batch 1"]
    beam_prompts = [
        torch.randint(0, model.config.vocab_size, (4 + (7 * i) % 37,)).tolist()
        for i in range(args.beam_prompts)
    ]
    beams = dict(num_beams=4, max_new_tokens=args.beam_new_tokens)
    found: dict[str, list] = {}
    one_seconds = timed(
        lambda: found.__setitem__("one", [generate(model, p, **beams) for p in beam_prompts]), 1
    )
    batched_seconds = timed(
        lambda: found.__setitem__("batched", generate(model, beam_prompts, **beams)), 1
    )
    if found["one"] != found["batched"]:
        raise SystemExit("batched beam search differs from one prompt at a time")
    rows[f"seqgen beam 4, {args.beam_prompts} prompts one at a time"] = (
        args.beam_prompts * args.beam_new_tokens / one_seconds
    )
    rows[f"seqgen beam 4, {args.beam_prompts} prompts batched"] = (
        args.beam_prompts * args.beam_new_tokens / batched_seconds
    )
    pass_seconds, row_macs = products_seconds(model, 4 * args.beam_prompts, args.repeats)
    products_gflops = 2 * row_macs * 4 * args.beam_prompts / pass_seconds / 1e9
    mbr_prompts = [
        torch.randint(0, MBR_SHAPE["vocab_size"], (args.mbr_prompt_tokens,)).tolist()
        for _ in range(args.mbr_prompts)
    ]
    many = many_prompts_timings(model, args.many_prompts, args.batch)
    rows[f"seqgen, {args.many_prompts} prompts, batches of {args.batch} one by one"] = (
        many["new_tokens"] / many["batches"]
    )
    rows[f"seqgen, {args.many_prompts} prompts, continuous batching of {args.batch}"] = (
        many["new_tokens"] / many["continuous"]
    )
    mbr = mbr_timings(mbr_prompts, 16, 32, args.mbr_new_tokens)
    mbr_one = mbr["generate_one"] + mbr["consensus_pairs"]
    mbr_new = mbr["generate_batched"] + mbr["consensus_matrix"]
    weight_bytes = plain.num_params() * 4
    heads, head_size = model.config.n_head, model.config.n_embd // model.config.n_head
    hf_row = "transformers fp32, generate()"
    hf_batch_row = f"{hf_row}, batch {args.batch}"
    batch_row = f"seqgen fp32, KV cache, batch {args.batch}"
    report = {
        "tokens_per_second": rows["seqgen fp32, KV cache"],
        "speedup_vs_hf": rows["seqgen fp32, KV cache"] / rows[hf_row] if hf_row in rows else None,
        "speedup_vs_hf_batch8": rows[batch_row] / rows[hf_batch_row]
        if hf_batch_row in rows
        else None,
        "speedup_vs_no_cache": rows[f"seqgen fp32, KV cache, {m} new"]
        / rows[f"no-cache loop fp32, {m} new"],
        "speedup_bf16_vs_fp32": rows["seqgen bf16, KV cache"] / rows["seqgen fp32, KV cache"],
        "bandwidth_fraction": weight_bytes * rows["seqgen fp32, KV cache"] / bandwidth,
        "bandwidth_fraction_bf16": weight_bytes / 2 * rows["seqgen bf16, KV cache"] / bandwidth,
        "int8_tokens_per_second": rows["seqgen int8 weights, KV cache"],
        "fused_speedup": seconds["fp32 unfused, batch 1"] / seconds["fp32, batch 1"],
        "fused_speedup_bf16": seconds["bf16 unfused, batch 1"] / seconds["bf16, batch 1"],
        "bf16_batch_speedup_vs_fp32": seconds[f"fp32, batch {args.batch}"]
        / seconds[f"bf16, batch {args.batch}"],
        "int8_speedup_vs_fp32": seconds["fp32, batch 1"] / seconds["int8, batch 1"],
        "int8_batch_speedup_vs_fp32": seconds[f"fp32, batch {args.batch}"]
        / seconds[f"int8, batch {args.batch}"],
        "int8_bandwidth_fraction": int8_bytes * rows["seqgen int8 weights, KV cache"] / bandwidth,
        "int8_bpb_delta": int8_bpb_delta(args.bpb_ckpt, args.bpb_text),
        "int8_kernel": int8_kernel,
        "int8_weight_bytes": int8_bytes,
        "continuous_batching_speedup": many["batches"] / many["continuous"],
        "batch_tokens_per_second": rows[batch_row],
        "linear_kernels": chosen,
        "linear_kernels_bf16": chosen_bf16,
        "cache_dtype_bf16": str(cache_dtype(torch.bfloat16, torch.device("cpu"), heads, head_size)),
        "beam_batched_speedup": one_seconds / batched_seconds,
        "beam_sentences_per_second": args.beam_prompts / batched_seconds,
        "beam_products_bound": one_seconds / (args.beam_new_tokens * pass_seconds),
        "beam_products_gflops": products_gflops,
        "beam_ratio_at_bounds": args.beam_prompts * weight_bytes / bandwidth / pass_seconds,
        "mbr_speedup": mbr_one / mbr_new,
        "mbr_consensus_speedup": mbr["consensus_pairs"] / mbr["consensus_matrix"],
        "mbr_seconds": mbr,
        "read_bandwidth_gb_s": bandwidth / 1e9,
        "weight_bytes": weight_bytes,
        "no_cache_estimated": not args.exact_no_cache,
        "rows_tokens_per_second": rows,
        "settings": vars(args) | {"torch_threads": torch.get_num_threads()},
    }
    base = rows["seqgen fp32, KV cache"]
    print(f"\n{'decoder (batch 1 greedy unless noted)':<44}{'tokens/s':>10}{'vs seqgen':>11}")
    for name, value in rows.items():
        print(f"{name:<44}{value:>10.1f}{value / base:>10.2f}x")
    print(
        f"\nread bandwidth {bandwidth / 1e9:.1f} GB/s; fp32 weights {weight_bytes / 1e6:.0f} MB; "
        f"bandwidth bound {bandwidth / weight_bytes:.1f} tokens/s; "
        f"seqgen reaches {report['bandwidth_fraction']:.0%} of it; bf16: "
        f"{report['bandwidth_fraction_bf16']:.0%} of its own (half the bytes); int8 "
        f"({int8_kernel} kernel, {int8_bytes / 1e6:.0f} MB a token): "
        f"{report['int8_bandwidth_fraction']:.0%} of its own"
    )
    print(
        f"batched beam: its products over {4 * args.beam_prompts} rows run at "
        f"{products_gflops:.0f} GFLOPS; were the batched side nothing but them, "
        f"{report['beam_products_bound']:.2f}x one prompt at a time; were that side at the "
        f"bandwidth bound too, {report['beam_ratio_at_bounds']:.2f}x"
    )
    print(
        f"MBR, {args.mbr_prompts} prompts x 16 samples: one prompt at a time "
        f"{mbr['generate_one']:.1f} s generating + {mbr['consensus_pairs']:.1f} s consensus "
        f"(rouge-score pair by pair); batched {mbr['generate_batched']:.1f} s + "
        f"{mbr['consensus_matrix']:.2f} s (RougeSimilarity.matrix); same choices"
    )
    for key in (
        "speedup_vs_hf",
        "speedup_vs_hf_batch8",
        "speedup_vs_no_cache",
        "speedup_bf16_vs_fp32",
        "fused_speedup",
        "fused_speedup_bf16",
        "int8_speedup_vs_fp32",
        "int8_batch_speedup_vs_fp32",
        "int8_bpb_delta",
        "beam_batched_speedup",
        "continuous_batching_speedup",
        "mbr_speedup",
        "mbr_consensus_speedup",
    ):
        if report[key] is not None:
            print(f"{key}: {report[key]:.2f}")
    write_report(args.report, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
