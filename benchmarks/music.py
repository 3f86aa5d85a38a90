"""Music task benchmark: (a) MIDI -> event encoding speed against miditok's MIDILike and a
naive pure-Python event loop; (b) peak memory of one relative-attention layer (forward and
backward) with the skewing trick against the naive O(L^2 D) gather; (c) held-out NLL per
event after training on POP909 for equal budgets with absolute and relative positions,
and with absolute positions but without the note state (`data.note_state none`: the model
is not told which notes are sounding); (d) continuations of the held-out performances by the
better model of (c) (or `--continue_ckpt`), as generation runs it (`--rules all`: notes
released at the checkpoint's hold limits) and with
`--rules valid` (report key `continuation_rules_valid`: the model alone), and by the
model without the note state: prompted with each one's first `--prompt_seconds`, it plays
`--seconds` on, compared with what the performer played next (overlap of six
statistics with bootstrap intervals, long notes, the NLL of the real continuation; the
performer's own next seconds as a yardstick).

    pip install -e .[bench]       # miditok, for (a)
    python -m benchmarks.music --data ../shared/data/pop909 --budget_seconds 600 \
        --report runs/bench/music.json --out runs/bench/music

(b) runs each variant in its own process and reads the growth of its peak resident memory
(bf16 by default: the naive variant needs several times L^2 D numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from benchmarks.common import (
    RECIPES,
    ROOT,
    parse_args,
    seconds_in_turns,
    seqgen_training_step,
    train,
    write_report,
)
from seqgen.config import ModelConfig
from seqgen.generation.cache import causal_mask
from seqgen.model import RelativeSelfAttention
from seqgen.tables import markdown_table
from seqgen.tasks import known_options
from seqgen_tasks.music.data import find_midi
from seqgen_tasks.music.events import (
    NOTE_OFF,
    NOTE_ON,
    TIME_SHIFT,
    VELOCITY,
    encode_notes,
    quantize,
)
from seqgen_tasks.music.midi import notes_from_symusic

RECIPE = RECIPES / "music" / "pop909.yaml"
# (c)'s models: the recipe's options each, trained for the same time
VARIANTS = {
    "learned": ["--model.pos_embedding=learned"],
    "relative": ["--model.pos_embedding=relative"],
    "without_note_state": [
        "--model.pos_embedding=learned",
        "--data.note_state=none",
        "--model.state_logits=false",
    ],
}


# ---------------------------------------------------------------- (a) encoding


def naive_events(notes) -> list[int]:
    """The same events as `encode_notes`, one Python loop over sorted note on/off events."""
    items = []
    for p, s, e, v in zip(
        notes.pitch.tolist(),
        notes.start.tolist(),
        notes.end.tolist(),
        notes.velocity.tolist(),
        strict=True,
    ):
        items.append((e, 0, p, 0))
        items.append((s, 1, p, (v - 1) // 4 + 1))
    items.sort()
    out, now, last_bin = [], 0, None
    for step, is_on, pitch, bin_ in items:
        while step - now > 100:
            out.append(TIME_SHIFT + 100)
            now += 100
        if step > now:
            out.append(TIME_SHIFT + step - now)
            now = step
        if is_on and bin_ != last_bin:
            out.append(VELOCITY + bin_)
            last_bin = bin_
        out.append(NOTE_ON + pitch if is_on else NOTE_OFF + pitch)
    return out


def timed(encode, inputs: list) -> dict:
    started = time.perf_counter()
    events = sum(len(encode(x)) for x in inputs)
    seconds = time.perf_counter() - started
    return {
        "files_per_second": len(inputs) / seconds,
        "events_per_second": events / seconds,
        "seconds": seconds,
        "events": events,
    }


def encoding(files: list[Path]) -> dict:
    import symusic

    def ours(path):
        return encode_notes(quantize(notes_from_symusic(symusic.Score(str(path)))))

    def naive(path):
        return naive_events(quantize(notes_from_symusic(symusic.Score(str(path)))))

    encoders = {"seqgen (symusic + numpy)": ours, "naive Python loop (symusic parse)": naive}
    try:
        import miditok

        midilike = miditok.MIDILike(
            miditok.TokenizerConfig(num_velocities=32, use_sustain_pedals=True)
        )

        def with_miditok(path):
            sequences = midilike.encode(path)
            return [
                i
                for s in (sequences if isinstance(sequences, list) else [sequences])
                for i in s.ids
            ]

        encoders["miditok MIDILike"] = with_miditok
    except ImportError:
        print("miditok is not installed (pip install -e .[bench]): skipping it", file=sys.stderr)
    for path in files[:20]:  # both of our encoders give the same events
        assert ours(path).tolist() == naive(path), path
    results = {}
    for name, encode in encoders.items():
        encode(files[0])  # warm up (imports, tables)
        results[name] = timed(encode, files)
    # the event writing alone, from notes parsed beforehand: numpy against the Python loop
    parsed = [quantize(notes_from_symusic(symusic.Score(str(path)))) for path in files]
    results["seqgen events only"] = timed(encode_notes, parsed)
    results["naive events only"] = timed(naive_events, parsed)
    return results


# ---------------------------------------------------------------- (b) memory


def naive_attention(attn: RelativeSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Relative attention that gathers the embedding of every (query, key) pair."""
    B, T, C = x.shape
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k, v))
    distance = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).clamp(min=0)
    pairs = attn.rel[:, attn.rel.size(1) - 1 - distance]  # (nh, T, T, hs): O(L^2 D)
    scores = q @ k.transpose(-2, -1) + torch.einsum("bhtd,htsd->bhts", q, pairs)
    scores = (scores / math.sqrt(k.size(-1))).masked_fill(~causal_mask(T, T, x.device), -math.inf)
    y = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
    return attn.c_proj(y)


def memory_probe(variant: str, length: int, width: int, heads: int, dtype: str) -> dict:
    """Peak resident memory growth (bytes) of one forward + backward, in this process."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=8,
        block_size=length,
        n_layer=1,
        n_head=heads,
        n_embd=width,
        pos_embedding="relative",
    )
    attn = RelativeSelfAttention(config).to(getattr(torch, dtype))
    x = torch.randn(1, length, width, dtype=getattr(torch, dtype), requires_grad=True)
    forward = (lambda: attn(x)) if variant == "skewing" else (lambda: naive_attention(attn, x))
    with open("/proc/self/statm") as statm:
        before = int(statm.read().split()[1]) * resource.getpagesize()
    started = time.perf_counter()
    forward().float().square().mean().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_bytes": peak - before, "seconds": time.perf_counter() - started}


def memory(length: int, width: int, heads: int, dtype: str) -> dict:
    results = {}
    for variant in ("skewing", "naive"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.music",
                "--memory_probe",
                variant,
                "--length",
                str(length),
                "--width",
                str(width),
                "--heads",
                str(heads),
                "--dtype",
                dtype,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if done.returncode != 0:
            raise SystemExit(f"memory probe {variant} failed:\n{done.stderr[-2000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


# ---------------------------------------------------------------- (d) continuations


def held_out_performances(data: dict) -> list:
    """The dev performances of training on `data` (a recipe's data options): (d) compares
    arms, a choice, so it reads dev; the recipe's figures come from test
    (benchmarks.music_recipe)."""
    from seqgen_tasks.music.task import MusicData, MusicTask

    return MusicTask(MusicData(**known_options(MusicData, data))).load().val


def continuation(
    generator, held_out: list, prompt_seconds: float, seconds: float, rules: str = "all"
) -> dict:
    """(d) by a loaded checkpoint on the `held_out` performances; with `rules` valid (no
    hold limits), the model alone decides when notes end."""
    from seqgen_tasks.music.continuation import continuations

    found = continuations(generator, held_out, prompt_seconds, seconds, rules=rules)
    limits = "no note-length rules"
    if found["hold_limits"]:
        limits = "hold limits " + ", ".join(f"{x:g}" for x in found["hold_limits"]) + " s by octave"
    print(
        f"\n(d) continuations of {found['performances']} held-out performances: "
        f"{prompt_seconds:g} s of prompt, {seconds:g} s played on ({generator.path}; "
        f"{limits})"
    )
    later = found["performer_later"]["overlap"] or {}
    rows = [
        (key, f"{value:.3f} [{low:.3f}, {high:.3f}]", f"{later[key]:.3f}" if key in later else "-")
        for (key, value), (low, high) in zip(
            found["overlap"].items(), found["overlap_interval"].values(), strict=True
        )
    ]
    print(
        markdown_table(
            [
                "overlap with the real continuations",
                "value [95% CI]",
                "the performer's next seconds",
            ],
            rows,
        )
    )
    real, ours = found["failures"]["real"], found["failures"]["generated"]
    print(
        markdown_table(
            ["", "generated", "real"],
            [(key, f"{ours[key]:.3f}", f"{real[key]:.3f}") for key in ours],
        )
    )
    print(
        f"NLL per event of the real continuations: {found['nll_per_event_real']:.4f}; notes "
        f"released when held too long: {found['released_when_held_too_long']}"
    )
    return found


def both_continuations(ckpt: str, held_out: list, args: argparse.Namespace) -> dict:
    """(d) by `ckpt` as `seqgen generate` runs it (notes released at the hold limits), and
    by the model alone."""
    from seqgen.inference import load

    generator = load(ckpt)
    return {
        "continuation": continuation(generator, held_out, args.prompt_seconds, args.seconds),
        "continuation_rules_valid": continuation(
            generator, held_out, args.prompt_seconds, args.seconds, rules="valid"
        ),
    }


# ---------------------------------------------------------------- (c) training


def step_times(config: str) -> dict:
    """Seconds per training step of the recipe's model with learned and with relative
    positions, at its batch size, in the precision `precision: auto` picks for the learned
    one on this machine (and in fp32 too, where that is bf16), taken in turns."""
    from seqgen.config import TrainConfig
    from seqgen.model import GPT
    from seqgen.training.trainer import resolve_precision
    from seqgen_tasks.music.tokenizer import PerformanceTokenizer

    recipe = yaml.safe_load(Path(config).read_text())
    # positions compared on the bare model: the token state's maps cost both alike
    model = {
        **recipe["model"],
        "vocab_size": PerformanceTokenizer().vocab_size,
        "state_logits": False,
    }
    batch = recipe["train"]["batch_size"]
    configs = {p: ModelConfig(**{**model, "pos_embedding": p}) for p in ("learned", "relative")}
    train_config = TrainConfig(
        precision=recipe["train"].get("precision", "32-true"), batch_size=batch, accelerator="cpu"
    )
    chosen = resolve_precision(train_config, GPT(configs["learned"]))
    precisions = ["bf16", "fp32"] if "bf16" in chosen else ["fp32"]
    times = {}
    for precision in precisions:
        torch.manual_seed(0)
        steps = {p: seqgen_training_step(c, batch) for p, c in configs.items()}
        times[precision] = seconds_in_turns(steps, precision, steps=5, warmup=2)
        times[precision]["ratio"] = times[precision]["relative"] / times[precision]["learned"]
    return {
        "precision": precisions[0],
        "batch_size": batch,
        "seconds": times,
        "relative_step_time_ratio": times[precisions[0]]["ratio"],
    }


def held_out_data(args: argparse.Namespace) -> dict:
    """The data options (c) trains with: the recipe's, on --data, with the overrides'
    `--data.*` (e.g. --data.val)."""
    recipe = yaml.safe_load(Path(args.config).read_text()).get("data", {})
    given, rest = {}, list(args.overrides)
    while rest:
        flag = rest.pop(0)
        if flag.startswith("--data."):
            key, _, value = flag.removeprefix("--data.").partition("=")
            given[key] = yaml.safe_load(value if value or not rest else rest.pop(0))
    return {**recipe, **given, "train": args.data}


def train_variant(
    data: str, config: str, variant: str, seconds: float, work: Path, extra: list[str]
) -> dict:
    return train(
        "pretrain",
        [
            "--config",
            config,
            "--data.train",
            data,
            *VARIANTS[variant],
            f"--train.max_time={seconds}",
            "--train.progress_bar=false",
            "--out_dir",
            str(work / variant),
            *extra,
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="POP909 (or any MIDI folder)")
    parser.add_argument("--encode_files", type=int, default=200, help="files timed in (a)")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--budget_seconds", type=float, default=600.0, help="per model in (c)")
    parser.add_argument("--config", default=str(RECIPE), help="recipe of (c): %(default)s")
    parser.add_argument("--prompt_seconds", type=float, default=10.0, help="(d)")
    parser.add_argument("--seconds", type=float, default=30.0, help="(d)")
    parser.add_argument(
        "--continue_ckpt", help="(d) with this checkpoint (default: the better model of (c))"
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["encode", "memory", "steps", "train", "baseline", "continue"],
        help="leave out a part (baseline: (c) and (d) without the note state)",
    )
    parser.add_argument("--report")
    parser.add_argument("--out", help="keep the runs here, the better model as OUT/final")
    parser.add_argument("--memory_probe", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="recipe overrides for (c), after --")
    args = parse_args(parser, argv)
    if args.memory_probe:
        print(
            json.dumps(
                memory_probe(args.memory_probe, args.length, args.width, args.heads, args.dtype)
            )
        )
        return 0
    if not args.data and (not set(args.skip) >= {"encode", "train"} or args.continue_ckpt):
        parser.error("--data is needed for encoding (a), training (c) and continuations (d)")
    report: dict = {}
    if "encode" not in args.skip:
        files = find_midi(args.data)[: args.encode_files]
        speed = encoding(files)
        report["encoding"] = speed
        print(f"\n(a) encoding {len(files)} files of {args.data}")
        rows = [
            (name, f"{row['files_per_second']:.1f}", round(row["events_per_second"]))
            for name, row in speed.items()
        ]
        print(markdown_table(["encoder", "files/s", "events/s"], rows))
        ours = speed["seqgen (symusic + numpy)"]["files_per_second"]
        if "miditok MIDILike" in speed:
            theirs = speed["miditok MIDILike"]["files_per_second"]
            report["encode_speedup_vs_miditok"] = ours / theirs
        report["encode_speedup_vs_naive"] = (
            ours / speed["naive Python loop (symusic parse)"]["files_per_second"]
        )
        report["events_only_speedup_vs_naive"] = (
            speed["seqgen events only"]["files_per_second"]
            / speed["naive events only"]["files_per_second"]
        )
    if "memory" not in args.skip:
        peaks = memory(args.length, args.width, args.heads, args.dtype)
        report["memory"] = {
            **peaks,
            "length": args.length,
            "width": args.width,
            "heads": args.heads,
            "dtype": args.dtype,
        }
        ratio = peaks["skewing"]["peak_bytes"] / peaks["naive"]["peak_bytes"]
        report["relative_memory_ratio"] = ratio
        print(
            f"\n(b) one relative-attention layer, forward + backward, L={args.length} "
            f"D={args.width} {args.heads} heads, {args.dtype}"
        )
        print(
            markdown_table(
                ["variant", "peak MiB", "seconds"],
                [
                    (name, round(row["peak_bytes"] / 2**20), f"{row['seconds']:.2f}")
                    for name, row in peaks.items()
                ],
            )
        )
        print(f"ratio (skewing / naive): {report['relative_memory_ratio']:.4f}")
    if "steps" not in args.skip:
        found = step_times(args.config)
        report.update(step_times=found, relative_step_time_ratio=found["relative_step_time_ratio"])
        print(f"\n(c) a training step of {args.config}, batch {found['batch_size']}")
        print(
            markdown_table(
                ["precision", "learned s", "relative s", "relative / learned"],
                [
                    (name, f"{row['learned']:.3f}", f"{row['relative']:.3f}", f"{row['ratio']:.2f}")
                    for name, row in found["seconds"].items()
                ],
            )
        )
    if "train" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(args.out or tmp)
            work.mkdir(parents=True, exist_ok=True)
            variants = [
                v for v in VARIANTS if v != "without_note_state" or "baseline" not in args.skip
            ]
            runs = {
                variant: train_variant(
                    args.data, args.config, variant, args.budget_seconds, work, args.overrides
                )
                for variant in variants
            }
            best = min(("learned", "relative"), key=lambda p: runs[p]["val_loss"])
            if "continue" not in args.skip and not args.continue_ckpt:
                from seqgen.inference import load

                held_out = held_out_performances(held_out_data(args))
                report.update(both_continuations(str(work / best / "final"), held_out, args))
                if "without_note_state" in runs:
                    report["continuation_without_note_state"] = continuation(
                        load(work / "without_note_state" / "final"),
                        held_out,
                        args.prompt_seconds,
                        args.seconds,
                    )
            if args.out:
                final = work / "final"
                if final.exists():
                    raise SystemExit(f"{final} exists; choose another --out")
                (work / best / "final").rename(final)
        if "without_note_state" in runs:
            report["nll_per_event_without_note_state"] = runs["without_note_state"]["val_loss"]
        report.update(
            nll_per_event_absolute=runs["learned"]["val_loss"],
            nll_per_event_relative=runs["relative"]["val_loss"],
            better=best,
            training={
                p: {
                    k: r[k]
                    for k in (
                        "val_loss",
                        "steps",
                        "train_tokens",
                        "tokens_per_second",
                        "train_seconds",
                        "params",
                        "epochs",
                    )
                }
                for p, r in runs.items()
            },
        )
        print(f"\n(c) held-out NLL per event after {args.budget_seconds:.0f} s of training each")
        print(
            markdown_table(
                ["model", "NLL/event", "steps", "tokens/s"],
                [
                    (name, row["val_loss"], row["steps"], round(row["tokens_per_second"]))
                    for name, row in report["training"].items()
                ],
            )
        )
    if "continue" not in args.skip and args.continue_ckpt:
        with tempfile.TemporaryDirectory() as tmp:
            held_out = held_out_performances(held_out_data(args))
            report.update(both_continuations(args.continue_ckpt, held_out, args))
    for key in ("continuation", "continuation_rules_valid", "continuation_without_note_state"):
        if key in report:
            found = report[key]
            found["long_notes_fraction"] = found["failures"]["generated"]["long_notes_fraction"]
            report["reference"] = {
                "long_notes_fraction": found["failures"]["real"]["long_notes_fraction"]
            }
    write_report(args.report, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
