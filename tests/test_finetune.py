"""Fine-tuning through the shared core: batching by length, a tiny model memorising a few
translation pairs, and the CLI end to end (pretrain -> finetune -> evaluate -> generate)."""

import csv
import json
import re
import subprocess
import sys

import pytest
from helpers import TINY_MODEL, flags, make_pairs, write_parallel

from seqgen import checkpoint
from seqgen.cli import main
from seqgen.config import ModelConfig, TrainConfig
from seqgen.inference import load
from seqgen.model import GPT
from seqgen.training.examples import LengthGroupedBatches
from seqgen.training.workflow import RunConfig, run
from seqgen_tasks.translation.data import TranslationData

TRAIN = {
    "train.batch_size": 8,
    "train.warmup_steps": 2,
    "train.learning_rate": 3e-3,
    "train.val_every_n_steps": 10,
    "train.checkpoint_every_n_steps": 10,
    "train.progress_bar": "false",
}


def test_length_grouped_batches_cover_every_example_once_per_epoch():
    lengths = [(i * 37) % 101 for i in range(1000)]
    sampler = LengthGroupedBatches(lengths, batch_size=16, seed=3, group_batches=10)
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        assert sorted(i for batch in epoch for i in batch) == list(range(1000))
        spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch)
        assert spread / len(epoch) < 15  # similar lengths together (random batches: ~90)
    assert first != second  # a new order each epoch
    shards = [list(LengthGroupedBatches(lengths, 16, 3, 10, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(first) // 2
    seen = [i for shard in shards for batch in shard for i in batch]
    assert len(seen) == len(set(seen))  # ranks never share an example


@pytest.mark.slow
def test_tiny_model_memorises_pairs_and_translates_them_greedily(sp_tokenizer, tmp_path):
    pairs = make_pairs(6, seed=1)
    prefix = write_parallel(tmp_path / "data", "train", pairs)
    config = ModelConfig(
        vocab_size=sp_tokenizer.vocab_size, block_size=96, n_layer=2, n_head=2, n_embd=64
    )
    checkpoint.save_model(tmp_path / "pretrained", GPT(config), sp_tokenizer, task="text")
    cfg = RunConfig(
        task="translation",
        init_from=str(tmp_path / "pretrained"),
        train=TrainConfig(
            max_steps=250,
            batch_size=6,
            learning_rate=3e-3,
            warmup_steps=10,
            val_every_n_steps=250,
            progress_bar=False,
        ),
        data=TranslationData(train=str(prefix), val=str(prefix)),
        lm_weight=0.0,
        out_dir=str(tmp_path / "run"),
    )
    report = run(cfg)
    assert report["vocab_size"] == sp_tokenizer.vocab_size + 2
    assert report["val_loss"] < 0.05
    generator = load(tmp_path / "run")
    for source, target in pairs:
        assert generator.generate(source, temperature=0.0, max_new_tokens=80) == target
    translated = generator.generate_many(
        [s for s, _ in pairs], max_new_tokens=80, num_beams=3, temperature=0.0
    )
    assert translated == [t for _, t in pairs]


@pytest.fixture
def parallel(tmp_path):
    data = tmp_path / "data"
    write_parallel(data, "train", make_pairs(64, seed=0))
    write_parallel(data, "val", make_pairs(8, seed=1))
    return data


def finetune(*args):
    return main(["finetune", "--task", "translation", *flags(TRAIN), *args])


def test_cli_pretrain_finetune_evaluate_generate(corpus_file, parallel, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="seqgen")
    pre = tmp_path / "pre"
    assert (
        main(
            [
                "pretrain",
                "--data.source",
                str(corpus_file),
                "--out_dir",
                str(pre),
                "--train.max_steps",
                "5",
                *flags({**TRAIN, **TINY_MODEL}),
            ]
        )
        == 0
    )
    run_dir, report = tmp_path / "mt", tmp_path / "ft.json"
    assert (
        finetune(
            "--init_from",
            str(pre),
            "--data.train",
            str(parallel / "train"),
            "--data.val",
            str(parallel / "val"),
            "--train.max_steps",
            "12",
            "--out_dir",
            str(run_dir),
            "--report",
            str(report),
        )
        == 0
    )
    ft = json.loads(report.read_text())
    assert ft["steps"] == 12 and ft["train_examples"] == 64
    assert "added 2 special tokens (ids 320-321)" in caplog.text  # <delim>, <2de>
    assert ft["init_from"] == str(pre / "final")
    meta = checkpoint.read_meta(run_dir / "final")
    assert meta["task"] == "translation" and meta["task_options"]["target_lang"] == "de"
    capsys.readouterr()

    scores, output = tmp_path / "scores.json", tmp_path / "hyp.de"
    assert (
        main(
            [
                "evaluate",
                "--task",
                "translation",
                "--ckpt",
                str(run_dir),
                "--source",
                str(parallel / "val.en"),
                "--reference",
                str(parallel / "val.de"),
                "--num_beams",
                "2",
                "--max_new_tokens",
                "12",
                "--output",
                str(output),
                "--report",
                str(scores),
            ]
        )
        == 0
    )
    result = json.loads(scores.read_text())
    assert result["sentences"] == 8 and 0 <= result["bleu"] <= 100
    assert re.search(r"\| system +\| +BLEU +\|", capsys.readouterr().out)
    assert len(output.read_text().splitlines()) == 8
    # scoring the written file without a model gives the same numbers
    rescored = [
        "evaluate",
        "--task",
        "translation",
        "--hypotheses",
        str(output),
        "--reference",
        str(parallel / "val.de"),
        "--report",
        str(scores),
    ]
    assert main(rescored) == 0
    assert json.loads(scores.read_text())["bleu"] == pytest.approx(result["bleu"])
    # minimum Bayes risk decoding: the chrF consensus of sampled translations
    mbr = [
        "evaluate",
        "--task",
        "translation",
        "--ckpt",
        str(run_dir),
        "--source",
        str(parallel / "val.en"),
        "--reference",
        str(parallel / "val.de"),
        "--max_new_tokens",
        "12",
        "--mbr_samples",
        "3",
        "--temperature",
        "1.0",
    ]
    assert main(mbr) == 2  # beam search (the default, 4 beams) draws no samples
    assert "give temperature > 0 and num_beams 1" in capsys.readouterr().err
    assert main([*mbr, "--num_beams", "1", "--output", str(output), "--report", str(scores)]) == 0
    assert json.loads(scores.read_text())["mbr_samples"] == 3
    assert len(output.read_text().splitlines()) == 8

    # an answer never runs past the context (that would slide its source out of view)
    generator = load(run_dir)
    lengths = []
    generator.task.decode = lambda ids, tokenizer: lengths.append(len(ids)) or ""
    sources = (parallel / "val.en").read_text().splitlines()
    generator.generate_many(sources, max_new_tokens=1000, temperature=0.0, eos_id=())
    block = generator.model.config.block_size
    assert sorted(lengths) == sorted(block - len(generator.prompt_ids(s)) for s in sources)

    translate = [
        "generate",
        "--task",
        "translation",
        "--ckpt",
        str(run_dir),
        "--prompt",
        "The king rides.",
        "--temperature",
        "0",
        "--max_new_tokens",
        "8",
    ]
    assert main(translate) == 0
    printed = capsys.readouterr().out.strip()
    assert printed and not printed.startswith("The king rides.")  # the answer, not an echo


def test_cli_from_scratch_with_a_config_file(parallel, tmp_path):
    config = tmp_path / "mt.yaml"
    config.write_text(
        f"task: translation\ninit_from: none\ndata:\n  train: {parallel / 'train'}\n"
        f"  val: {parallel / 'val'}\n"
    )
    report = tmp_path / "r.json"
    assert (
        main(
            [
                "finetune",
                "--config",
                str(config),
                *flags({**TRAIN, **TINY_MODEL}),
                "--train.max_steps",
                "3",
                "--out_dir",
                str(tmp_path / "run"),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    assert json.loads(report.read_text())["init_from"] == "none"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.train", "X"], "set --init_from CKPT"),
        (["--init_from", "none", "--data.train", "{data}/nope"], "no such file"),
        (
            ["--init_from", "none", "--data.train", "{data}/train", "--data.val", "{data}/bad"],
            "bad.en has 2 lines, {data}/bad.de has 1",
        ),
        (
            ["--init_from", "{data}", "--data.train", "{data}/train", "--data.val", "{data}/val"],
            "not a seqgen checkpoint",
        ),
        (["--init_from", "none", "--data.trian", "x"], "trian"),
    ],
)
def test_cli_errors_name_the_problem(parallel, tmp_path, capsys, args, message):
    (parallel / "bad.en").write_text("a\nb\n")
    (parallel / "bad.de").write_text("x\n")
    args = [a.replace("{data}", str(parallel)) for a in args]
    assert finetune(*args, "--out_dir", str(tmp_path / "run")) == 2
    assert message.replace("{data}", str(parallel)) in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_task_errors(capsys):
    assert main(["finetune", "--init_from", "none"]) == 2
    assert "set the task" in capsys.readouterr().err
    assert main(["finetune", "--task", "text", "--init_from", "none"]) == 2  # an ordinary task
    assert "set data.source" in capsys.readouterr().err
    assert main(["finetune", "--task", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_cli_resume_a_finetuning_run(parallel, tmp_path):
    run_dir, report = tmp_path / "run", tmp_path / "r.json"
    common = [
        "--data.train",
        str(parallel / "train"),
        "--data.val",
        str(parallel / "val"),
        *flags(TINY_MODEL),
        "--out_dir",
        str(run_dir),
        "--report",
        str(report),
    ]
    assert finetune("--init_from", "none", "--train.max_steps", "10", *common) == 0
    first = json.loads(report.read_text())
    assert finetune("--resume", "last", "--train.max_steps", "16", *common) == 0
    resumed = json.loads(report.read_text())
    assert resumed["steps"] == 16 and resumed["vocab_size"] == first["vocab_size"]
    assert resumed["train_tokens"] > first["train_tokens"]
    assert resumed["init_from"] == "none"  # provenance survives the resume


@pytest.mark.slow
def test_finetune_under_ddp_shards_batches_across_two_processes(parallel, tmp_path):
    report = tmp_path / "ddp.json"
    argv = [
        "finetune",
        "--task",
        "translation",
        "--init_from",
        "none",
        "--data.train",
        str(parallel / "train"),
        "--data.val",
        str(parallel / "val"),
        *flags(
            {
                **TRAIN,
                **TINY_MODEL,
                "train.max_steps": 4,
                "train.accelerator": "cpu",
                "train.devices": 2,
                "train.strategy": "ddp",
            }
        ),
        "--out_dir",
        str(tmp_path / "ddp"),
        "--report",
        str(report),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "seqgen.cli", *argv], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    values = json.loads(report.read_text())
    assert values["steps"] == 4 and values["epochs"] == 4 * 8 * 2 / 64  # both ranks' batches
    assert (tmp_path / "ddp" / "final" / "model.safetensors").is_file()


def test_keep_best_keeps_the_checkpoint_with_the_lowest_val_loss_across_a_resume(
    parallel, tmp_path
):
    run_dir, report = tmp_path / "run", tmp_path / "r.json"
    # 8 training pairs: the model memorises them and its val loss soon turns up
    common = [
        "--data.train",
        str(parallel / "val"),
        "--data.val",
        str(parallel / "train"),
        *flags(TINY_MODEL),
        "--train.learning_rate",
        "3e-2",
        "--train.keep_best",
        "true",
        "--out_dir",
        str(run_dir),
        "--report",
        str(report),
    ]
    assert finetune("--init_from", "none", "--train.max_steps", "30", *common) == 0
    assert finetune("--resume", "last", "--train.max_steps", "60", *common) == 0
    result = json.loads(report.read_text())
    logged = {}
    for version in ("version_0", "version_1"):
        rows = list(csv.DictReader((run_dir / "logs" / version / "metrics.csv").open()))
        during_fit = [r for r in rows if r["val_loss"]][:-1]  # the last: the final validate
        logged |= {int(r["step"]) + 1: float(r["val_loss"]) for r in during_fit}
    assert sorted(logged) == [10, 20, 30, 40, 50, 60]
    best_step = min(logged, key=logged.get)
    assert best_step < 60  # not simply the last
    assert result["best_step"] == best_step == checkpoint.read_meta(run_dir / "best")["step"]
    assert result["best_val_loss"] == pytest.approx(logged[best_step])
    assert result["best_checkpoint"] == str(run_dir / "best")
    assert load(run_dir / "best").generate("The king rides.", max_new_tokens=3) is not None


def test_keep_best_without_a_validation_says_so(parallel, tmp_path, caplog):
    report = tmp_path / "r.json"
    assert (
        finetune(
            "--init_from",
            "none",
            "--data.train",
            str(parallel / "train"),
            "--data.val",
            str(parallel / "val"),
            *flags(TINY_MODEL),
            "--train.max_steps",
            "4",
            "--train.keep_best",
            "true",
            "--out_dir",
            str(tmp_path / "run"),
            "--report",
            str(report),
        )
        == 0
    )
    assert "no validation ran during training" in caplog.text
    assert not (tmp_path / "run" / "best").exists()
    assert "best_step" not in json.loads(report.read_text())


def test_a_recipes_generation_defaults_travel_with_its_checkpoint(parallel, tmp_path, capsys):
    """`generation:` in a recipe: checked before training, stored in the checkpoint, and
    the default of generate, evaluate and seqgen.load wherever a call does not set it."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("generation:\n  max_new_tokens: 3\n  num_beams: 2\n")
    common = ["--init_from", "none", "--data.train", str(parallel / "train")]
    common += ["--data.val", str(parallel / "val"), "--config", str(recipe), *flags(TINY_MODEL)]
    run_dir = tmp_path / "mt"
    assert finetune(*common, "--train.max_steps", "3", "--out_dir", str(run_dir)) == 0
    generator = load(run_dir)
    assert checkpoint.read_meta(run_dir / "final")["generation"] == {
        "max_new_tokens": 3,
        "num_beams": 2,
    }
    defaults = generator.task.decoding_defaults()
    assert defaults["max_new_tokens"] == 3 and defaults["num_beams"] == 2
    assert defaults["temperature"] == 0.0  # the task's own default stays under it
    ids = generator.prompt_ids("the king rides")
    assert len(generator.continue_ids(ids)) == 3  # beams never end early here: 3 new ids
    assert generator.continue_ids(ids) == generator.continue_ids(ids, max_new_tokens=3)
    assert len(generator.continue_ids(ids, max_new_tokens=5)) == 5  # a call still decides
    mbr = {"mbr_samples": 4, "temperature": 0.7, "num_beams": 1, "max_new_tokens": 3}
    generator.task.recipe_generation = mbr
    assert len(generator.continue_ids(ids, seed=0)) == 3  # one sample: mbr is generate_mbr's
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["generate", "--ckpt", str(run_dir), "--help"])
    beams = capsys.readouterr().out.split("--num_beams NUM_BEAMS\n")[1].split("--length_penalty")[0]
    assert "default: 2)" in beams
    for bad, says in (
        ("generation:\n  beams: 2\n", "generation.beams: not a generation option"),
        ("generation:\n  mbr_samples: 4\n", "mbr_samples > 1 draws samples"),
        ("generation:\n  top_p: 2.0\n", r"generation: top_p must be in \(0, 1\]"),
        (
            "generation:\n  min_new_tokens: 200\n",
            r"min_new_tokens \(200\) > max_new_tokens \(100\).*max_new_tokens=100",
        ),
    ):
        recipe.write_text(bad)
        assert finetune(*common, "--out_dir", str(tmp_path / "bad")) == 2
        assert re.search(says, capsys.readouterr().err)
        assert not (tmp_path / "bad").exists()  # refused before anything is written
