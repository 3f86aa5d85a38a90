"""Every benchmark runs end to end in seconds on tiny data and a tiny model, through the real
recipes (shrunk), so a renamed option or report field breaks here, not after an hour."""

import argparse
import json
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch
import yaml
from conftest import make_corpus
from helpers import make_pairs, write_parallel, write_song

from benchmarks import (
    generate,
    lm_shakespeare,
    music,
    music_recipe,
    music_releases,
    music_rules,
    music_splits,
    nanogpt,
    summarization_wikisum,
)
from benchmarks import serve as serve_benchmark
from benchmarks import translation_multi30k as translation
from benchmarks.common import RECIPES
from seqgen.cpu import KERNELS
from seqgen.quantize import KERNELS as INT8_KERNELS
from seqgen_tasks.music.generate import HOLD_QUANTILE
from seqgen_tasks.music.splits import HELD_OUT

TINY = {
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64, "dropout": 0.0},
    "tokenizer": {"vocab_size": 400},
}
TINY_TRAIN = {
    "batch_size": 4,
    "warmup_steps": 2,
    "precision": "32-true",
    "val_every_n_steps": 1000,
    "checkpoint_every_n_steps": 1000,
}


def shrunk(recipe: str, tmp_path, **changes) -> str:
    """The repository's recipe with a tiny model and short training, as a new YAML file."""
    values = yaml.safe_load((RECIPES / recipe).read_text())
    for section, updates in {**TINY, "train": TINY_TRAIN, **changes}.items():
        values[section] = {**values.get(section, {}), **updates}
    path = tmp_path / recipe.replace("/", "_")
    path.write_text(yaml.safe_dump(values))
    return str(path)


def report_of(path):
    report = json.loads(path.read_text())
    machine = report["machine"]
    assert machine["cpu"] and isinstance(machine["vector_extensions"], list)
    assert machine["cores"] >= 1 and machine["torch"]
    return report


@pytest.mark.slow
def test_lm_shakespeare(tmp_path, corpus_file, capsys):
    out = tmp_path / "lm.json"
    anchor = nanogpt.ANCHOR.is_dir()  # ../shared beside the repository (CI has it)
    beside = (
        ["--nanogpt_eval_iters", "2", "--skip", "raw_step"]
        if anchor
        else ["--skip", "nanogpt", "--skip", "raw_step"]
    )
    assert (
        lm_shakespeare.main(
            [
                "--data",
                str(corpus_file),
                "--budget_seconds",
                "2",
                "--report",
                str(out),
                *beside,
                "--",
                "--model.n_layer",
                "1",
                "--model.n_head",
                "2",
                "--model.n_embd",
                "32",
                "--model.block_size",
                "32",
                "--tokenizer.vocab_size",
                "400",
                "--train.batch_size",
                "4",
            ]
        )
        == 0
    )
    report = report_of(out)
    assert 0 < report["val_bpb"] < 10 and report["steps"] > 0
    assert report["model"]["n_layer"] == 1 and report["dropout"] == 0.0  # under 5 min: none
    assert "| val_bpb " in capsys.readouterr().out
    if anchor:  # nanoGPT's CPU recipe trained for the same 2 s on the same text
        theirs = report["nanogpt"]
        assert 0 < report["nanogpt_val_bpb"] == theirs["val_bpb"] < 10 and theirs["iters"] >= 2
        assert theirs["train_seconds"] > 0 and report["nanogpt_tokens_per_second"] > 0
        assert report["bpb_margin_vs_nanogpt"] == pytest.approx(
            report["nanogpt_val_bpb"] - report["val_bpb"]
        )


@pytest.mark.skipif(not nanogpt.ANCHOR.is_dir(), reason="needs ../shared/anchors/nanoGPT")
def test_raw_steps_of_seqgen_and_nanogpt_at_one_shape(tmp_path):
    copy = nanogpt.prepare(nanogpt.ANCHOR, Path(__file__).parent / "conftest.py", tmp_path)
    assert (copy / "data" / "shakespeare_char" / "train.bin").stat().st_size > 0
    shape = nanogpt.Shape(
        n_layer=1, n_head=2, n_embd=32, vocab_size=64, batch_size=2, block_size=16
    )
    timed = nanogpt.raw_steps(nanogpt.load_model_module(copy), shape, "fp32", steps=2, warmup=1)
    assert timed["seqgen_seconds"] > 0 and timed["nanogpt_seconds"] > 0
    assert timed["ratio"] == pytest.approx(timed["nanogpt_seconds"] / timed["seqgen_seconds"])
    assert timed["seqgen_tokens_per_second"] == pytest.approx(32 / timed["seqgen_seconds"])


def test_the_loop_is_compared_with_its_raw_step_at_the_recipes_shape(monkeypatch):
    shapes = []

    def raw_steps(module, shape, precision):
        shapes.append((shape, precision))
        return {"seqgen_tokens_per_second": 20_000.0, "ratio": 1.0}

    monkeypatch.setattr(nanogpt, "raw_steps", raw_steps)
    monkeypatch.setattr(lm_shakespeare, "native_bf16", lambda: False)
    result = {
        "model": TINY["model"] | {"vocab_size": 400, "bias": True, "activation": "gelu"},
        "train": {"batch_size": 4},
        "precision": "bf16-mixed",
        "tokens_per_second": 18_000.0,
    }
    report = lm_shakespeare.raw_step_report(None, result)
    assert report["loop_vs_raw_step"] == pytest.approx(0.9)
    assert shapes[0][0].batch_size == 4 and shapes[0][1] == "bf16"  # as the loop trained
    # without bf16 hardware the 10M shape is timed in fp32 only
    assert [precision for _, precision in shapes] == ["bf16", "fp32"]


@pytest.mark.slow
def test_translation_multi30k(tmp_path, capsys):
    data = tmp_path / "multi30k"
    pairs = make_pairs(240)
    for split, chosen in (
        ("train", pairs[:200]),
        ("val", pairs[200:220]),
        ("test_2016_flickr", pairs[220:]),
    ):
        write_parallel(data, split, chosen)
    recipe = shrunk("translation/multi30k.yaml", tmp_path)
    pretrain_recipe = shrunk("translation/multi30k_pretrain.yaml", tmp_path)
    out = tmp_path / "mt.json"
    assert (
        translation.main(
            [
                "--data",
                str(data),
                "--budget_seconds",
                "4",
                "--config",
                recipe,
                "--pretrain_config",
                pretrain_recipe,
                "--num_beams",
                "2",
                "--compare_scratch",
                "--report",
                str(out),
                "--out",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )
    report = report_of(out)
    assert 0 <= report["bleu"] <= 100 and 0 <= report["bleu_scratch"] <= 100
    assert report["bleu_ci"][0] <= report["bleu"] <= report["bleu_ci"][1]
    assert report["beams"] == 2 and report["pretrain"]["steps"] > 0
    assert (tmp_path / "runs" / "final" / "model.safetensors").is_file()
    assert len((tmp_path / "runs" / "final-test_2016_flickr.de").read_text().splitlines()) == 20
    assert "| from scratch " in capsys.readouterr().out


def articles(n: int, seed: int):
    words = make_corpus(n * 12, seed).split()
    return [
        {
            "id": f"a{i}",
            "title": " ".join(words[i * 40 : i * 40 + 2]),
            "lead": " ".join(words[i * 40 + 2 : i * 40 + 14]),
            "body": " ".join(words[i * 40 + 14 : i * 40 + 40]),
        }
        for i in range(n)
    ]


@pytest.mark.slow
def test_summarization_wikisum(tmp_path, capsys):
    data = tmp_path / "wikisum"
    data.mkdir()
    for split, rows in (("train", articles(12, 0)), ("valid", articles(3, 1))):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pretrain = shrunk("summarization/wikitext_pretrain.yaml", tmp_path)
    finetune = shrunk(
        "summarization/wikisum.yaml",
        tmp_path,
        data={"max_summary_tokens": 16},
        train={**TINY_TRAIN, "max_steps": 3},
        generation={"min_new_tokens": 2},  # within the 16 tokens a summary may have here
    )
    out = tmp_path / "sum.json"
    common = [
        "--data",
        str(data),
        "--dev_articles",
        "2",
        "--mbr_samples",
        "2",
        "--min_new_tokens",
        "2",
        "--batch_size",
        "4",
    ]
    assert (
        summarization_wikisum.main(
            [
                *common,
                "--budget_seconds",
                "4",
                "--pretrain_config",
                pretrain,
                "--config",
                finetune,
                "--report",
                str(out),
                "--out",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )
    report = report_of(out)
    for system in ("pretrained", "scratch", "baseline"):
        assert 0 <= report[system]["rougeLsum"]["mid"] <= 100
    assert report["decoding"]["mbr_samples"] == 2
    assert all(report["decode_seconds"][name] > 0 for name in ("pretrained", "scratch"))
    assert "rougeLsum" in report["pretrained_minus_scratch"]
    # a kept run scored again with other decoding, without training
    again = tmp_path / "again.json"
    assert (
        summarization_wikisum.main(
            [
                *common[:2],
                "--rescore",
                str(tmp_path / "runs"),
                "--out",
                str(tmp_path / "beam"),
                "--mbr_samples",
                "1",
                "--temperature",
                "0",
                "--num_beams",
                "2",
                "--min_new_tokens",
                "2",
                "--report",
                str(again),
            ]
        )
        == 0
    )
    assert report_of(again)["rescored"] == str(tmp_path / "runs")
    assert "| pretrained - scratch (paired) |" in capsys.readouterr().out


@pytest.mark.slow
def test_music(tmp_path, capsys):
    songs = tmp_path / "songs"
    for i in range(4):
        write_song(songs / f"{i:02d}.mid", shift=i)
    recipe = shrunk("music/pop909.yaml", tmp_path)
    out = tmp_path / "music.json"
    assert (
        music.main(
            [
                "--data",
                str(songs),
                "--encode_files",
                "4",
                "--length",
                "32",
                "--width",
                "16",
                "--heads",
                "2",
                "--dtype",
                "float32",
                "--budget_seconds",
                "1.5",
                "--config",
                recipe,
                "--prompt_seconds",
                "3",
                "--seconds",
                "4",
                "--report",
                str(out),
            ]
        )
        == 0
    )
    report = report_of(out)
    assert report["encode_speedup_vs_naive"] > 0
    assert report["memory"]["skewing"]["peak_bytes"] > 0
    losses = {
        "learned": report["nll_per_event_absolute"],
        "relative": report["nll_per_event_relative"],
    }
    assert report["better"] == min(losses, key=losses.get)  # the one with the lower NLL
    steps = report["step_times"]["seconds"][report["step_times"]["precision"]]
    assert report["relative_step_time_ratio"] == steps["relative"] / steps["learned"] > 0
    found = report["continuation"]  # the dev song, continued
    assert found["performances"] == 1 and 0 <= found["overlap"]["mean"] <= 1
    assert set(found["overlap"]) == {
        "pitch_class",
        "velocity",
        "note_density",
        "ioi",
        "duration",
        "polyphony",
        "mean",
    }
    assert 0 <= found["long_notes_fraction"] <= 1
    assert report["reference"]["long_notes_fraction"] == 0  # the song's notes last < 2 s
    assert report["nll_per_event_without_note_state"] > 0
    assert report["training"]["without_note_state"]["steps"] > 0
    assert report["continuation_without_note_state"]["performances"] == 1
    assert len(found["hold_limits"]) == 11
    assert report["continuation_rules_valid"]["rules"] == "valid"
    assert report["continuation_rules_valid"]["hold_limits"] is None
    assert report["continuation_rules_valid"]["released_when_held_too_long"] == 0
    assert "(d) continuations of 1 held-out performances" in capsys.readouterr().out


@pytest.mark.slow
def test_music_recipe_reports_on_test_from_several_models(tmp_path, capsys):
    songs = tmp_path / "songs"
    for i in range(6):
        write_song(songs / f"{i:02d}.mid", shift=i)
    train = {**TINY_TRAIN, "max_steps": 4, "max_time": None}
    recipe = shrunk("music/pop909.yaml", tmp_path, train=train)
    out = tmp_path / "recipe.json"
    argv = ["--config", recipe, "--models", "2", "--out", str(tmp_path / "runs")]
    argv += ["--prompt_seconds", "3", "--seconds", "4", "--report", str(out)]
    assert music_recipe.main([*argv, "--", "--data.train", str(songs)]) == 0
    report = report_of(out)
    assert [m["seed"] for m in report["models"]] == [1, 2]
    first, second = report["models"]
    assert first["test_performances"] == 1 and first["steps"] == second["steps"] > 0
    assert first["dev_nll_per_event"] != second["dev_nll_per_event"]  # two seeds, two models
    for key in ("mean_overlap_all", "mean_overlap_valid", "duration_overlap_all"):
        assert 0 <= first[key] <= 1
        values = [m[key] for m in report["models"]]
        assert report[key] == {"mean": sum(values) / 2, "min": min(values), "max": max(values)}
    assert first["mean_overlap_ratio_all"] == (
        first["mean_overlap_all"] / first["performer_later_mean_overlap"]
    )
    # the same models scored again without training: the same figures
    again = tmp_path / "again.json"
    argv[argv.index("--report") + 1] = str(again)
    assert music_recipe.main([*argv, "--trained", "--", "--data.train", str(songs)]) == 0
    # (the likelihoods to float precision: the kernels are chosen by timing at each load)
    likelihoods = ("dev_nll_per_event", "test_nll_per_event")
    for before, after in zip(report["models"], report_of(again)["models"], strict=True):
        for key in likelihoods:
            assert before[key] == pytest.approx(after.pop(key), 1e-4)
        assert {k: v for k, v in before.items() if k not in likelihoods} == after
    assert "| mean_overlap_valid " in capsys.readouterr().out
    # the rules' paired comparison, on the two models' dev song
    rules = tmp_path / "rules.json"
    runs = [str(tmp_path / "runs" / f"seed{seed}") for seed in (1, 2)]
    argv = ["--ckpt", runs[0], "--ckpt", runs[1], "--prompt_seconds", "3"]
    argv += ["--seconds", "4", "--samples", "20", "--report", str(rules)]
    assert music_rules.main(argv) == 0
    found = report_of(rules)
    assert found["split"] == "dev" and [m["performances"] for m in found["models"]] == [1, 1]
    for model in found["models"]:  # each statistic's overlap, whose mean is the mean overlap
        for arm in ("all", "valid"):
            names = ("pitch_class", "velocity", "note_density", "ioi", "duration", "polyphony")
            parts = [model[f"{name}_overlap_{arm}"] for name in names]
            assert model[f"mean_overlap_{arm}"] == pytest.approx(sum(parts) / len(parts))
    for arm in ("valid",):
        gaps = [m[f"mean_overlap_{arm}"] - m["mean_overlap_all"] for m in found["models"]]
        assert found[f"{arm}_minus_all"]["difference"] == pytest.approx(sum(gaps) / 2)
    printed = capsys.readouterr().out
    assert "mean overlap, paired over 1 dev performances and 2 models" in printed
    assert "valid_minus_all: " in printed and "baseline" not in printed
    # one model against another, arm by arm: against itself, no difference
    argv[argv.index("--report") + 1] = str(against := tmp_path / "against.json")
    assert music_rules.main([*argv, "--baseline", runs[1], "--baseline", runs[1]]) == 0
    found = report_of(against)
    assert [b["ckpt"] for b in found["baselines"]] == [runs[1], runs[1]]
    for arm in ("all", "valid"):
        gap = (
            found["models"][0][f"mean_overlap_{arm}"] - found["baselines"][0][f"mean_overlap_{arm}"]
        )
        assert found[f"{arm}_minus_baseline"]["difference"] == pytest.approx(gap / 2)
    # the model alone against the baseline with the rules
    pair = (found["models"], found["baselines"])
    gaps = [m["mean_overlap_valid"] - b["mean_overlap_all"] for m, b in zip(*pair, strict=True)]
    assert found["valid_minus_baseline_all"]["difference"] == pytest.approx(sum(gaps) / 2)
    with pytest.raises(SystemExit):
        music_rules.main([*argv, "--baseline", runs[1]])  # one for each --ckpt
    options = argparse.Namespace(split="dev", quantiles=[])
    with pytest.raises(SystemExit, match="holds out other dev performances"):
        music_rules.model_arms(runs[0], ["all"], options, compared_with=[])  # another split
    # a model trained on other songs, compared on the first models' dev performances
    others = tmp_path / "others"
    for i in range(6):
        write_song(others / f"{i:02d}.mid", shift=10 + i)
    other_argv = ["--config", recipe, "--models", "1", "--out", str(tmp_path / "other")]
    other_argv += ["--prompt_seconds", "3", "--seconds", "4", "--report", str(tmp_path / "o.json")]
    assert music_recipe.main([*other_argv, "--", "--data.train", str(others)]) == 0
    other = str(tmp_path / "other" / "seed1")
    assert music_rules.fingerprint(music_rules.split_performances(other, "dev")) != (
        music_rules.fingerprint(music_rules.split_performances(runs[0], "dev"))
    )
    with pytest.raises(SystemExit, match="give --performances_of"):
        music_rules.main([*argv[:2], *argv[4:], "--baseline", other])
    argv[argv.index("--report") + 1] = str(shared := tmp_path / "shared.json")
    assert (
        music_rules.main([*argv[:2], *argv[4:], "--baseline", other, "--performances_of", runs[0]])
        == 0
    )
    found = report_of(shared)
    assert found["performances_of"] == runs[0] and found["baselines"][0]["ckpt"] == other
    assert "all_minus_baseline" in found
    # hold limits at other quantiles of the training notes; at the stored one, all itself
    argv[argv.index("--report") + 1] = str(quantiles := tmp_path / "quantiles.json")
    stored = f"{HOLD_QUANTILE:g}"
    assert music_rules.main([*argv, "--arms", "--quantiles", "0.5", stored]) == 0
    found = report_of(quantiles)
    assert found[f"hold_quantile_{stored}_minus_all"]["difference"] == 0.0
    assert "hold_quantile_0.5_minus_all" in found and "valid_minus_all" not in found
    with pytest.raises(SystemExit):
        music_rules.main([*argv, "--arms"])  # nothing to compare
    # sampled otherwise: at the task's own temperature, all itself
    argv[argv.index("--report") + 1] = str(sampled := tmp_path / "sampled.json")
    sampling = ["--arms", "--temperatures", "1", "0.5", "--top_ps", "0.9"]
    assert music_rules.main([*argv, *sampling]) == 0
    found = report_of(sampled)
    assert found["temperature_1_minus_all"]["difference"] == 0.0
    assert {"temperature_0.5_minus_all", "top_p_0.9_minus_all"} <= found.keys()
    assert all(0 <= m["mean_overlap_top_p_0.9"] <= 1 for m in found["models"])
    for wrong in (["--temperatures", "0"], ["--top_ps", "1"]):
        with pytest.raises(SystemExit):
            music_rules.main([*argv, "--arms", *wrong])
    # how the models release their notes, teacher-forced and alone
    argv = ["--ckpt", runs[0], "--prompt_seconds", "3", "--seconds", "4"]
    assert music_releases.main([*argv, "--report", str(releases := tmp_path / "rel.json")]) == 0
    (model,) = report_of(releases)["models"]
    for side in ("performer", "model_alone"):
        bins = model[side]
        assert [b["sounding"] for b in bins] == list(music_releases.BUCKETS)
        assert sum(b["events"] for b in bins) > 0
        assert bins[0]["released"] in (0.0, None)  # nothing sounding, nothing to release


def test_music_continues_the_performances_the_overrides_hold_out(tmp_path):
    recipe = str(music.RECIPES / "music" / "asap.yaml")  # its data.test is a relative path
    parser_args = argparse.Namespace(
        config=recipe,
        data="train/",
        overrides=["--data.val", "held/out", "--data.augment=false", "--train.batch_size", "3"],
    )
    data = music.held_out_data(parser_args)
    assert data["val"] == "held/out" and data["augment"] is False and data["train"] == "train/"
    assert "batch_size" not in data


@pytest.mark.slow
def test_generate(tmp_path, capsys, text_ckpt, corpus_file):
    out = tmp_path / "generate.json"
    assert (
        generate.main(
            [
                "--model",
                "tiny",
                "--prompt_tokens",
                "4",
                "--new_tokens",
                "4",
                "--no_cache_tokens",
                "4",
                "--no_cache_samples",
                "2",
                "--repeats",
                "1",
                "--batch",
                "2",
                "--beam_prompts",
                "6",
                "--beam_new_tokens",
                "4",
                "--mbr_prompts",
                "3",
                "--mbr_prompt_tokens",
                "8",
                "--mbr_new_tokens",
                "12",
                "--many_prompts",
                "5",
                "--bpb_ckpt",
                str(text_ckpt),
                "--bpb_text",
                str(corpus_file),
                "--report",
                str(out),
            ]
        )
        == 0
    )
    report = report_of(out)
    assert report["tokens_per_second"] > 0 and report["bandwidth_fraction"] > 0
    assert report["bandwidth_fraction_bf16"] > 0 and report["continuous_batching_speedup"] > 0
    assert report["beam_batched_speedup"] > 0 and report["beam_products_bound"] > 0
    assert report["beam_products_gflops"] > 0 and report["beam_ratio_at_bounds"] > 0
    assert report["mbr_speedup"] > 0 and report["mbr_consensus_speedup"] > 0
    assert report["int8_kernel"] in INT8_KERNELS
    assert report["int8_speedup_vs_fp32"] > 0 and report["int8_bandwidth_fraction"] > 0
    assert abs(report["int8_bpb_delta"]) < 0.01  # int8 weights barely move a model's loss
    assert report["linear_kernels"] is None or set(report["linear_kernels"]) <= set(KERNELS)
    assert report["read_bandwidth_gb_s"] > 0
    assert report["cache_dtype_bf16"] in ("torch.float32", "torch.bfloat16")
    shown = capsys.readouterr().out
    assert "seqgen int8 weights, KV cache" in shown and "packed (one row)" in shown


def test_products_pass_counts_every_linear_on_the_kernels_the_model_runs():
    from seqgen.config import ModelConfig
    from seqgen.cpu import fast_linears
    from seqgen.model import GPT

    config = ModelConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16)
    model = GPT(config).eval()
    per_row = 2 * 12 * 16 * 16 + 16 * 50  # c_attn, c_proj, c_fc, c_proj a block; the head
    seconds, macs = generate.products_seconds(model, 3, 1)
    assert seconds > 0 and macs == per_row
    fast_linears(model, ("packed", "packed", "packed"))
    assert generate.products_seconds(model, 3, 1)[1] == per_row


def test_flags_are_spelled_as_seqgen_spells_them():
    from seqgen.errors import SeqgenError

    with pytest.raises(SeqgenError, match="with underscores: --new_tokens"):
        generate.main(["--new-tokens", "4", "--help"])


@pytest.mark.slow
def test_serve(tmp_path, capsys):
    pytest.importorskip("fastapi", reason="seqgen serve needs pip install 'seqgen[serve]'")
    out = tmp_path / "serve.json"
    ckpt = str(Path(__file__).parent / "fixtures" / "checkpoints_v1" / "text")
    assert (
        serve_benchmark.main(
            [
                "--ckpt",
                ckpt,
                "--clients",
                "4",
                "--requests",
                "12",
                "--batch_size",
                "4",
                "--previous",
                "none",
                "--report",
                str(out),
            ]
        )
        == 0
    )
    report = report_of(out)
    assert report["errors"] == 0 and report["continuous_vs_static"] > 0
    assert report["checked_outputs"] == 12  # greedy or seeded: equal to one at a time
    assert report["mismatched_outputs"] == {"continuous": 0, "static_any_options": 0}
    assert report["continuous"]["requests"] == 12 and report["p99_ttft_seconds"] > 0
    assert "| continuous " in capsys.readouterr().out


@pytest.mark.slow
def test_data_prepare(tmp_path, capsys):
    from benchmarks import data_prepare

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"text{i}.txt").write_text(make_corpus(400, seed=i))
    out = tmp_path / "prepare.json"
    tiny = [
        "--model.n_layer",
        "1",
        "--model.n_embd",
        "32",
        "--model.n_head",
        "2",
        "--model.block_size",
        "32",
        "--train.batch_size",
        "4",
    ]
    argv = [
        "--data",
        str(data),
        "--size_mb",
        "0.4",
        "--num_proc",
        "2",
        "--train_steps",
        "3",
        "--vocab_size",
        "400",
        "--work_dir",
        str(tmp_path / "work"),
        "--report",
        str(out),
    ]
    assert data_prepare.main([*argv, "--", *tiny]) == 0
    report = report_of(out)
    for key in (
        "tokens_per_second_one_process",
        "tokens_per_second",
        "bytes_per_second",
        "parallel_speedup",
        "encode_ceiling_tokens_per_second",
        "peak_rss_bytes",
        "peak_rss_growth",
        "seconds_to_first_step_from_shards",
        "old_path_seconds_to_first_step",
        "old_path_peak_rss_bytes",
        "training_speed_ratio",
    ):
        assert report[key] > 0, key
    assert report["corpus_bytes"] >= 400_000
    assert "parallel_speedup" in capsys.readouterr().out


def test_shard_storage(tmp_path):
    from benchmarks import shard_storage

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(2):
        (corpus / f"part{i}.txt").write_text(make_corpus(300, seed=i))
    from seqgen.tokenizer import SentencePieceTokenizer, TokenizerConfig

    SentencePieceTokenizer.train([make_corpus()], TokenizerConfig(vocab_size=320)).save(
        tmp_path / "tok"
    )
    argv = [
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(tmp_path / "tok"),
        "--block_size",
        "16",
        "--windows",
        "50",
        "--work_dir",
        str(tmp_path / "work"),
        "--report",
        str(tmp_path / "storage.json"),
    ]
    try:
        import litdata  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="needs litdata"):
            shard_storage.main(argv)
        return
    assert shard_storage.main(argv) == 0
    report = report_of(tmp_path / "storage.json")
    assert report["seqgen_windows_per_second"] > 0 and report["litdata_windows_per_second"] > 0


class UniformModel(torch.nn.Module):
    """Every event equally likely, whatever came before."""

    config = argparse.Namespace(block_size=8)

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.weight = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids, state=None):
        return torch.zeros(*ids.shape, self.vocab)


def test_music_releases_counts_the_notes_sounding_and_the_mass_on_their_releases():
    from seqgen_tasks.music.events import NOTE_OFF, TIME_SHIFT

    vocab = 391
    generator = argparse.Namespace(model=UniformModel(vocab), states=lambda ids: None)
    # bos, strike 60 and 64, wait, release 60, strike 67, release 64 and 67
    ids = [389, 60, 64, TIME_SHIFT + 10, NOTE_OFF + 60, 67, NOTE_OFF + 64, NOTE_OFF + 67]
    rows = music_releases.predictions(generator, ids, 1)
    assert rows[:, 0].tolist() == [0, 1, 2, 2, 1, 2, 1]  # notes sounding before each id
    assert rows[:, 1] == pytest.approx(rows[:, 0] / vocab)  # one release per sounding pitch
    assert rows[:, 2].tolist() == [0, 0, 0, 1, 0, 1, 1]
    assert rows[:, 3] == pytest.approx(128 / vocab) and rows[:, 4].tolist() == [1, 1, 0, 0, 1, 0, 0]
    bins = music_releases.by_sounding(rows)
    assert [b["events"] for b in bins[:3]] == [1, 6, 0] and bins[1]["released"] == 0.5
    assert bins[2]["p_release"] is None  # no event in it


def write_lengths(path, seconds: float, notes: int = 20) -> None:
    """A take whose notes all last `seconds`, one every half second (never more than two
    sounding)."""
    midi, piano = pretty_midi.PrettyMIDI(), pretty_midi.Instrument(0)
    piano.notes += [pretty_midi.Note(80, 60 + n % 12, n / 2, n / 2 + seconds) for n in range(notes)]
    midi.instruments.append(piano)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.write(str(path))


def test_music_splits_compares_random_draws_of_pieces_and_reads_test_once(tmp_path, capsys):
    from seqgen_tasks.music.splits import split_of

    names = [f"piece{i}" for i in range(300)]
    train = [n for n in names if split_of(n) == "train"][:9]
    dev = next(n for n in names if split_of(n) == "dev")
    test = next(n for n in names if split_of(n) == "test")
    for k, piece in enumerate([*train, dev, test]):
        write_lengths(tmp_path / "corpus" / piece / "take.mid", 0.1 * (k + 1))
    assert music_splits.median_length(np.array([0, 3, 1, 5])) == 0.03  # 1 1 1 2 3 3 3 3 3
    table, splits = music_splits.piece_table(str(tmp_path / "corpus"), HELD_OUT)
    assert splits == {**dict.fromkeys(train, "train"), dev: "dev", test: "test"}
    same = music_splits.compare(table, train[:2], train[:2])
    assert same == {
        "duration_overlap": 1.0,
        "mean_overlap": 1.0,
        "median_note_gap": 0.0,
        "crowded_gap": 0.0,
    }
    apart = music_splits.compare(table, [train[0]], [train[3]])
    assert apart["median_note_gap"] == pytest.approx(0.3) and apart["duration_overlap"] < 0.5
    out = tmp_path / "splits.json"
    argv = ["--data", str(tmp_path / "corpus"), "--sizes", "2", "4", "--against", "3"]
    assert music_splits.main([*argv, "--draws", "20", "--report", str(out)]) == 0
    report = report_of(out)
    assert report["pieces"] == 10 and sorted(report["sizes"]) == ["2", "4"]  # never the test
    gaps = report["sizes"]["2"]["median_note_gap"]
    assert 0 < gaps["q50"] <= gaps["q95"] <= 0.9  # lengths 0.1-1.0 s
    assert report["dev_vs_test"]["median_note_gap"] == pytest.approx(0.1)  # 1.0 s and 1.1 s
    assert "| 4 vs 3 " in capsys.readouterr().out
    # a corpus that brings its test: every piece of --data may be drawn, and the test's read
    write_lengths(tmp_path / "valid" / "other" / "take.mid", 2.0)
    argv += ["--test", str(tmp_path / "valid"), "--report", str(out)]
    assert music_splits.main([*argv, "--draws", "5"]) == 0
    report = report_of(out)
    assert report["pieces"] == 11 and report["test_pieces"] == 1
    assert report["dev_pieces"] == 2  # all 10% held out goes to dev: 1.0 s and 1.1 s notes
    assert report["dev_vs_test"]["median_note_gap"] == pytest.approx(0.9)  # against 2.0 s
    with pytest.raises(SystemExit, match="too few"):
        music_splits.main([*argv, "--sizes", "9"])
