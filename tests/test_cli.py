"""End to end through the CLI: pretrain -> checkpoint -> resume -> generate, and bad input."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_MODEL, flags, make_pairs, write_parallel

from seqgen.cli import main
from seqgen.cpu import native_bf16
from seqgen.tokenizer import load_tokenizer

TINY = flags(
    {
        **TINY_MODEL,
        "train.batch_size": 8,
        "train.warmup_steps": 2,
        "train.learning_rate": 3e-3,
        "train.val_every_n_steps": 10,
        "train.checkpoint_every_n_steps": 10,
        "train.progress_bar": "false",
    }
)


def pretrain(corpus, out, *extra):
    report = out.parent / f"{out.name}-report.json"
    code = main(
        [
            "pretrain",
            "--data.source",
            str(corpus),
            "--out_dir",
            str(out),
            "--report",
            str(report),
            *TINY,
            *extra,
        ]
    )
    assert code == 0
    return json.loads(report.read_text())


def test_pretrain_resume_generate_info(corpus_file, tmp_path, capsys):
    out = tmp_path / "run"
    first = pretrain(corpus_file, out, "--train.max_steps", "20")
    for key in (
        "val_loss",
        "val_bpb",
        "train_tokens",
        "tokens_per_second",
        "steps",
        "wall_seconds",
        "params",
    ):
        assert key in first
    assert first["steps"] == 20 and first["train_tokens"] == 20 * 8 * 32
    assert 0 < first["val_bpb"] < 8
    assert 0 < first["train_loss"] < 10  # read before validate() resets the metrics
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "step-0000020" / "training_state.pt").is_file()
    assert list((out / "logs").glob("version_*/metrics.csv"))

    resumed = pretrain(corpus_file, out, "--train.max_steps", "60", "--resume", "last")
    assert resumed["steps"] == 60
    assert resumed["train_tokens"] == 60 * 8 * 32  # counts carry over the resume
    assert resumed["val_loss"] < first["val_loss"]
    meta = json.loads((out / "final" / "config.json").read_text())
    assert meta["task"] == "text" and meta["step"] == 60
    assert meta["model"]["vocab_size"] == 320

    capsys.readouterr()
    sample = ["generate", "--ckpt", str(out), "--prompt", "THE KING:", "--seed", "1"]
    assert main([*sample, "--max_new_tokens", "12"]) == 0
    first_sample = capsys.readouterr().out
    assert first_sample.startswith("THE KING:") and len(first_sample) > len("THE KING:\n")
    main([*sample, "--max_new_tokens", "12"])
    assert capsys.readouterr().out == first_sample  # seeded: reproducible

    assert main(["info", "--ckpt", str(out)]) == 0
    info = capsys.readouterr().out
    for line in (
        "  task            text",
        "  step            60",
        "  tokens trained  15,360",
        "  tokenizer       sentencepiece, 320 tokens",
        "  n_layer         1",
    ):
        assert line in info, info
    assert "total" in info


def test_config_file_and_overrides(corpus_file, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  n_layer: 2\ntrain:\n  max_steps: 3\n")
    report = pretrain(
        corpus_file, tmp_path / "run", "--config", str(config), "--model.n_layer", "1"
    )
    assert report["steps"] == 3


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "seqgen.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_errors_are_one_line_without_traceback(tmp_path):
    result = run_cli(
        "pretrain",
        "--data.source",
        str(tmp_path / "missing.txt"),
        "--out_dir",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'missing.txt'}: no such file"
    ]
    assert not (tmp_path / "out").exists()


def expect_error(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    return err


def test_bad_input_messages(tmp_path, capsys, sp_tokenizer, corpus_file):
    out = tmp_path / "out"
    base = ["pretrain", "--out_dir", str(out), *TINY]
    (tmp_path / "empty.txt").write_text("\n \n")
    expect_error(capsys, [*base, "--data.source", str(tmp_path / "empty.txt")], "corpus is empty")
    (tmp_path / "bad.txt").write_bytes(b"good line\nbad \xff byte")
    expect_error(
        capsys,
        [*base, "--data.source", str(tmp_path / "bad.txt")],
        "bad.txt: not UTF-8 text (byte offset 14, line 2",
    )
    sp_tokenizer.save(tmp_path / "tok")
    (tmp_path / "small.txt").write_text("the king\n")
    expect_error(
        capsys,
        [
            *base,
            "--data.source",
            str(tmp_path / "small.txt"),
            "--tokenizer.path",
            str(tmp_path / "tok"),
        ],
        "fewer than one block",
    )
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  n_layr: 2\n")
    err = expect_error(capsys, [*base, "--config", str(config)], "n_layr")
    assert str(config) in err
    expect_error(capsys, [*base, "--model.n_layer", "many"], "model.n_layer")
    expect_error(capsys, [*base, "--model.n_embd", "33"], "divisible")
    assert not out.exists()  # nothing written by any failed run


def test_a_setting_that_is_gone_says_what_replaced_it(tmp_path, capsys, corpus_file):
    base = ["pretrain", "--out_dir", str(tmp_path / "out"), "--data.source", str(corpus_file)]
    for flag, instead in (
        ("--data.cache_dir", "caches live under $SEQGEN_CACHE (default ~/.cache/seqgen)"),
        ("--data.num_workers", "set train.num_workers"),
    ):
        expect_error(capsys, [*base, flag, "2"], f"{flag} is gone: {instead}")
    expect_error(capsys, [*base, "--data.num_proc=2"], "--data.num_proc is gone")
    config = tmp_path / "old.yaml"
    config.write_text("data:\n  num_workers: 2\n")
    expect_error(
        capsys,
        [*base, "--config", str(config)],
        f"{config}: data.num_workers is gone: set train.num_workers",
    )
    expect_error(capsys, [*base, "--train.num_workers", "-1"], "train.num_workers must be >= 0")
    evaluate = ["evaluate", "--task", "music", "--generated", "a", "--reference", "b"]
    expect_error(capsys, [*evaluate, "--cache_dir", "c"], "--cache_dir is gone")
    assert not (tmp_path / "out").exists()


def test_checkpoint_errors_through_cli(corpus_file, tmp_path, capsys):
    out = tmp_path / "run"
    pretrain(corpus_file, out, "--train.max_steps", "2")
    expect_error(
        capsys,
        ["generate", "--ckpt", str(out), "--task", "music"],
        "trained for task 'text', not 'music'",
    )
    meta = json.loads((out / "final" / "config.json").read_text())
    meta["task"] = "music"
    (out / "final" / "config.json").write_text(json.dumps(meta))
    expect_error(
        capsys,
        [
            "pretrain",
            "--data.source",
            str(corpus_file),
            "--out_dir",
            str(out),
            "--resume",
            str(out / "final"),
            *TINY,
        ],
        "trained for task 'music'",
    )
    (out / "final" / "model.safetensors").write_bytes(b"\x00" * 10)
    music = ["generate", "--ckpt", str(out / "final"), "--out", str(tmp_path / "x.mid")]
    expect_error(capsys, music, "corrupt weights")  # through the music task's generate
    expect_error(capsys, ["generate", "--ckpt", str(tmp_path / "nope")], "no such checkpoint")


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["pretrain", "--help"],
        ["generate", "--help"],
        ["info", "--help"],
        ["tokenizer", "train", "--help"],
    ],
)
def test_help(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 0
    assert "usage" in capsys.readouterr().out


FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_v1"
EVERY_COMMAND = [
    "pretrain",
    "finetune --task translation",
    "finetune --task summarization",
    "pretrain --task music",
    "evaluate --task text",
    "evaluate --task translation",
    "evaluate --task summarization",
    "evaluate --task music",
    "generate",
    f"generate --ckpt {FIXTURES / 'music'}",
    "info",
    "plot",
    "attention",
    "export",
    "import",
    "data wikisum",
    "data prepare",
    "tokenizer train",
]


@pytest.mark.parametrize("command", EVERY_COMMAND)
def test_every_option_has_help_text(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0
    entries = re.split(r"\n(?=  -)", capsys.readouterr().out)
    options = [" ".join(e.split()) for e in entries if re.match(r"  --\w", e)]
    assert len(options) > 3
    # an option without a docstring shows only "(type: ..., default: ...)"
    no_help = re.compile(r"--[\w.]+( [A-Z_.]+| \{[^}]*\})? \((required, )?type:")
    bare = [o.split()[0] for o in options if no_help.match(o)]
    assert not bare, f"options without help: {bare}"
    if "music" in command and "generate" in command:
        assert "--prompt_seconds" in " ".join(options)  # the task's own options


def test_tokenizer_train_command(corpus_file, tmp_path, capsys):
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--data.source",
                str(corpus_file),
                "--tokenizer.vocab_size",
                "320",
                "--out",
                str(tmp_path / "tok"),
            ]
        )
        == 0
    )
    assert (tmp_path / "tok" / "tokenizer.model").is_file()
    pairs = write_parallel(tmp_path / "pairs", "train", make_pairs(40))  # any task's training data
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--task",
                "translation",
                "--data.train",
                str(pairs),
                "--tokenizer.vocab_size",
                "320",
                "--out",
                str(tmp_path / "mt_tok"),
            ]
        )
        == 0
    )
    assert load_tokenizer(tmp_path / "mt_tok").encode("der koenig") != []
    assert main(["info", "--model", "gpt2"]) == 0
    assert "124,439,808" in capsys.readouterr().out


def test_bf16_mixed_and_gradient_accumulation(corpus_file, tmp_path):
    extra = ["--train.precision", "bf16-mixed", "--train.accumulate_grad_batches", "2"]
    report = pretrain(corpus_file, tmp_path / "bf16", "--train.max_steps", "4", *extra)
    assert report["steps"] == 4 and report["precision"] == "bf16-mixed"
    assert report["train_tokens"] == 4 * 2 * 8 * 32  # two micro-batches per optimizer step
    auto = pretrain(
        corpus_file, tmp_path / "auto", "--train.max_steps", "1", "--train.precision", "auto"
    )
    assert auto["precision"] in (("32-true", "bf16-mixed") if native_bf16() else ("32-true",))


def test_auto_precision_is_bf16_only_where_the_hardware_computes_it(monkeypatch, caplog):
    import torch

    from seqgen.config import ModelConfig, TrainConfig
    from seqgen.model import GPT
    from seqgen.training import trainer as trainer_module
    from seqgen.training.trainer import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native, expected in [(True, "bf16-mixed"), (False, "32-true")]:
        monkeypatch.setattr(trainer_module, "native_bf16", lambda native=native: native)
        assert resolve_precision(TrainConfig(precision="auto")) == expected
    # with the model to train, a bf16 CPU times it: bf16 only where clearly faster
    model = GPT(ModelConfig.from_preset("tiny"))
    monkeypatch.setattr(trainer_module, "native_bf16", lambda: True)
    for fp32, bf16, expected in [
        (1.0, 0.5, "bf16-mixed"),
        (1.0, 0.95, "32-true"),
        (1.0, 2.0, "32-true"),
    ]:
        monkeypatch.setattr(
            trainer_module,
            "training_step_seconds",
            lambda *a, f=fp32, b=bf16: {"32-true": f, "bf16-mixed": b},
        )
        with caplog.at_level("INFO", logger="seqgen"):
            assert resolve_precision(TrainConfig(precision="auto"), model) == expected
        assert f"train.precision auto: {expected}" in caplog.text
        # several processes might time apart and choose apart: the hardware decides there
        assert resolve_precision(TrainConfig(precision="auto", devices=2), model) == "bf16-mixed"
    monkeypatch.setattr(trainer_module, "native_bf16", lambda: False)  # nothing to time
    assert resolve_precision(TrainConfig(precision="auto"), model) == "32-true"
    assert resolve_precision(TrainConfig(precision="32-true")) == "32-true"
    with caplog.at_level("WARNING", logger="seqgen"):  # asked for, so kept, but said slow
        assert resolve_precision(TrainConfig(precision="bf16-mixed")) == "bf16-mixed"
    assert "no bf16 hardware" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for gpu_bf16, expected in [(True, "bf16-mixed"), (False, "32-true")]:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, b=gpu_bf16, **k: b)
        assert resolve_precision(TrainConfig(precision="auto")) == expected
    # a run pinned to the CPU asks the CPU, not the GPU beside it
    assert resolve_precision(TrainConfig(precision="auto", accelerator="cpu")) == "32-true"


def test_wall_clock_budget_stops_training(corpus_file, tmp_path):
    timed = ["--train.max_steps", "-1", "--train.max_time", "3"]
    report = pretrain(corpus_file, tmp_path / "timed", *timed)
    assert report["steps"] > 0 and report["train_seconds"] < 30


@pytest.fixture
def random_ckpt(tmp_path, sp_tokenizer):
    import torch

    import seqgen

    torch.manual_seed(0)
    config = seqgen.ModelConfig(
        vocab_size=sp_tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32
    )
    return seqgen.save_model(tmp_path / "ckpt", seqgen.GPT(config), sp_tokenizer, "text")


def test_generate_options(random_ckpt, capsys):
    base = ["generate", "--ckpt", str(random_ckpt), "--prompt", "the", "--max_new_tokens", "8"]
    assert main([*base, "--num_samples", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("--- sample")] == [
        "--- sample 1",
        "--- sample 2",
        "--- sample 3",
    ]
    assert main([*base, "--num_beams", "3", "--stream", "false"]) == 0
    beam = capsys.readouterr().out
    assert main([*base, "--num_beams", "3"]) == 0
    assert capsys.readouterr().out == beam  # streamed or not, the same text
    assert main([*base, "--temperature", "0", "--precision", "bf16", "--stop", "e"]) == 0
    assert "e" not in capsys.readouterr().out.removeprefix("the")
    expect_error(capsys, [*base, "--top_p", "2"], "top_p must be in (0, 1]")
    expect_error(capsys, [*base, "--num_samples", "2", "--stream"], "stream prints one sample")
    expect_error(capsys, [*base, "--mbr_samples", "2"], "text task has no similarity")


def test_evaluate_text_matches_the_validation_of_training(corpus_file, corpus_text, tmp_path):
    from seqgen_tasks.text.corpus import split_tail

    out = tmp_path / "run"
    trained = pretrain(corpus_file, out, "--train.max_steps", "10")
    _, val_docs = split_tail([corpus_text], 0.1)  # the pretraining's validation text
    held_out = tmp_path / "val.txt"
    held_out.write_text("".join(val_docs))
    report = tmp_path / "eval.json"
    assert (
        main(["evaluate", "--ckpt", str(out), "--data", str(held_out), "--report", str(report)])
        == 0
    )
    scores = json.loads(report.read_text())
    assert scores["bits_per_byte"] == pytest.approx(trained["val_bpb"], rel=1e-4)
    assert scores["nll_per_token"] == pytest.approx(trained["val_loss"], rel=1e-4)


# ---------------------------------------------------------------- one grammar


def test_normalize_rewrites_conveniences_and_old_spellings(capsys):
    from seqgen.arguments import flags_of, normalize
    from seqgen.commands.generate import GenerateConfig

    generate = flags_of(GenerateConfig)
    assert normalize(["--stream", "--stop", "a", "--stop=b", "--seed", "1"], generate) == [
        "--stream=true",
        "--stop+",
        "a",
        "--stop+",
        "b",
        "--seed",
        "1",
    ]
    assert normalize(["--stream", "false", "--stop", "[a, b]"], generate) == [
        "--stream",
        "false",
        "--stop",
        "[a, b]",
    ]
    assert capsys.readouterr().err == ""
    assert normalize(["--unknown-flag", "1"], generate) == ["--unknown-flag", "1"]  # left to fail


def test_flags_are_spelled_as_their_fields(random_ckpt, capsys):
    base = ["generate", "--ckpt", str(random_ckpt), "--prompt", "the"]
    expect_error(
        capsys,
        [*base, "--max-new-tokens", "3"],
        "--max-new-tokens: flags are spelled as their fields, with underscores: --max_new_tokens",
    )
    expect_error(capsys, [*base, "--beams", "2"], "--beams")  # no other names
    expect_error(capsys, [*base, "--no-stream"], "--no-stream")
    expect_error(capsys, [*base, "--max-new-tokenz", "3"], "max-new-tokenz")


def test_generation_options_are_declared_once_with_the_tasks_defaults(capsys):
    import dataclasses

    from seqgen.generation.decoding import GenerationOptions

    helps = {}
    commands = (
        "generate translation",
        "evaluate translation",
        "evaluate summarization",
        "generate music",
    )
    for command in commands:
        name, task = command.split()
        with pytest.raises(SystemExit):
            main([name, "--task", task, "--help"])
        helps[f"{name} --task {task}"] = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(GenerationOptions):
        for text in helps.values():
            assert f"--{field.name} " in text and "-" not in field.name
    assert "Beam search with this many beams when > 1" in helps["generate --task translation"]
    for name in ("generate --task translation", "evaluate --task translation"):
        assert "(type: int, default: 4)" in helps[name].split("--num_beams NUM_BEAMS Beam")[1][:200]
    assert "--prompt_seconds" in helps["generate --task music"]
    assert "--prompt_seconds" not in helps["generate --task translation"]


def test_evaluate_config_in_python_takes_the_tasks_defaults(tmp_path):
    from seqgen.evaluation import eval_options

    config = eval_options("translation", reference="ref.de", hypotheses="hyp.de")
    assert (config.num_beams, config.temperature) == (4, 0.0)
    assert eval_options("translation", reference="r", hypotheses="h", num_beams=2).num_beams == 2
    with pytest.raises(ValueError, match="give ckpt"):
        eval_options("translation", reference="r")


def test_a_reader_that_leaves_early_is_no_error():
    """`seqgen info ... | head`: the pipe closes before seqgen writes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "seqgen.cli", "info", "--model", "tiny"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader is gone before the first line
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_progress_lines_in_a_pipe_continue_their_counts_after_a_resume(corpus_file, tmp_path):
    """Output to a file or a pipe gets plain progress lines, the first after step 1."""
    base = [
        "pretrain",
        "--data.source",
        str(corpus_file),
        "--out_dir",
        str(tmp_path / "run"),
        *flags(
            {
                **TINY_MODEL,
                "train.batch_size": 8,
                "train.val_every_n_steps": 20,
                "train.progress_every_seconds": 0.01,
            }
        ),
    ]

    def run_cli(*args):  # with progress shown (the tests' SEQGEN_LOG hides it)
        return subprocess.run(
            [sys.executable, "-m", "seqgen.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "SEQGEN_LOG": "INFO"},
        )

    first = run_cli(*base, "--train.max_steps", "40")
    assert first.returncode == 0, first.stderr[-2000:]
    lines = [line for line in first.stderr.splitlines() if line.startswith("step ")]
    assert lines[0].startswith("step 1/40 (2%)  train_loss ") and "ETA " in lines[0]
    assert len(lines) > 5 and any(line.startswith("step 20  val_loss ") for line in lines)
    assert lines[-2].startswith("step 40/40 (100%)") and lines[-2].endswith("(done)")
    assert "ETA" not in lines[-2]
    assert "Epoch" not in first.stderr and "v_num" not in first.stderr  # no bar in a pipe
    resumed = run_cli(*base, "--train.max_steps", "60", "--resume", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines = [line for line in resumed.stderr.splitlines() if line.startswith("step ")]
    assert lines[0].startswith("step 41/60 (68%)")


def test_tensorboard_curves_continue_across_a_resume(corpus_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    loggers = [
        "--train.logger",
        "[csv, tensorboard]",
        "--train.val_every_n_steps",
        "10",
        "--train.log_every_n_steps",
        "5",
    ]
    assert pretrain(corpus_file, run, "--train.max_steps", "20", *loggers)["steps"] == 20
    assert (
        pretrain(corpus_file, run, "--train.max_steps", "40", "--resume", "last", *loggers)["steps"]
        == 40
    )
    events = EventAccumulator(str(run / "logs" / "tensorboard"))
    events.Reload()
    val_steps = {event.step for event in events.Scalars("val_loss")}
    assert {9, 19, 29, 39} <= val_steps  # each check (Lightning logs at the step index)
    train_steps = [event.step for event in events.Scalars("train_loss")]
    assert min(train_steps) < 20 < max(train_steps)  # one curve, before and after the resume
    assert list((run / "logs").glob("version_*/metrics.csv"))  # CSV beside it


def test_a_logger_that_is_not_installed_is_named(corpus_file, tmp_path, capsys, monkeypatch):
    import pytorch_lightning.loggers.wandb as lightning_wandb

    class Missing:  # Lightning's requirement check where wandb is not installed
        def __bool__(self) -> bool:
            return False

        def __str__(self) -> str:
            return "Requirement 'wandb>=0.12.10' not met. No module named 'wandb'"

    monkeypatch.setattr(lightning_wandb, "_WANDB_AVAILABLE", Missing())
    code = main(
        [
            "pretrain",
            "--data.source",
            str(corpus_file),
            "--out_dir",
            str(tmp_path / "r"),
            *TINY,
            "--train.logger",
            "[wandb]",
        ]
    )
    assert code == 2 and "train.logger wandb: `pip install wandb` first" in capsys.readouterr().err


def test_wandb_offline_logs_one_run_across_a_resume(corpus_file, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="W&B is optional: pip install wandb to test it")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    logger = [
        "--train.logger",
        "[wandb]",
        "--train.val_every_n_steps",
        "10",
        "--train.log_every_n_steps",
        "5",
    ]
    assert pretrain(corpus_file, run, "--train.max_steps", "20", *logger)["steps"] == 20
    assert (
        pretrain(corpus_file, run, "--train.max_steps", "30", "--resume", "last", *logger)["steps"]
        == 30
    )
    records = sorted((run / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(records) == 2 and len({r.name for r in records}) == 1  # one run id: resumed
    for record in records:  # the metrics' names are in the run's history records
        data = record.read_bytes()
        assert b"train_loss" in data and b"val_loss" in data


def test_plot_overlays_the_curves_of_several_runs(corpus_file, tmp_path, capsys):
    import matplotlib.image

    from seqgen.commands.plot import read_curves

    for name, steps in (("a", "20"), ("b", "30")):
        pretrain(
            corpus_file,
            tmp_path / name,
            "--train.max_steps",
            steps,
            "--train.log_every_n_steps",
            "5",
        )
    pretrain(
        corpus_file,
        tmp_path / "a",
        "--train.max_steps",
        "40",
        "--resume",
        "last",
        "--train.log_every_n_steps",
        "5",
    )
    curves = read_curves(tmp_path / "a")  # the resumed run is one curve
    assert [step for step, _ in curves["val_loss"]][-1] == 40  # the final validation
    assert min(s for s, _ in curves["train_loss"]) < 20 < max(s for s, _ in curves["train_loss"])
    out = tmp_path / "curves.png"
    assert (
        main(
            [
                "plot",
                "--run",
                str(tmp_path / "a"),
                "--run",
                str(tmp_path / "b"),
                "--out",
                str(out),
                "--smooth",
                "2",
            ]
        )
        == 0
    )
    assert "train_loss, val_loss, val_bpb of 2 run(s)" in capsys.readouterr().out
    height, width, _ = matplotlib.image.imread(out).shape
    assert width > 2 * height  # two panels: loss, and bits per byte
    (tmp_path / "empty").mkdir()
    assert main(["plot", "--run", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no logs/version_*/metrics.csv" in capsys.readouterr().err


def test_mfu_is_logged_and_reported_against_the_peak(corpus_file, tmp_path):
    from seqgen.config import ModelConfig
    from seqgen.model import GPT
    from seqgen.training.mfu import training_flops_per_token

    report = pretrain(
        corpus_file,
        tmp_path / "run",
        "--train.max_steps",
        "3",
        "--train.peak_flops",
        "1e9",
        "--train.log_every_n_steps",
        "1",
    )
    model = GPT(ModelConfig(**report["model"]))
    flops = training_flops_per_token(model, model.config.block_size)
    # 6 per weight (position embeddings left out) + 12 x layers x width x context
    weights = model.num_params() - model.transformer.wpe.weight.numel()
    assert flops == 6 * weights + 12 * 1 * 32 * 32
    assert report["mfu"] == pytest.approx(report["tokens_per_second"] * flops / 1e9)
    logged = (tmp_path / "run" / "logs" / "version_0" / "metrics.csv").read_text()
    assert "mfu" in logged.splitlines()[0]
    assert pretrain(corpus_file, tmp_path / "plain", "--train.max_steps", "1")["mfu"] is None


@pytest.mark.slow
def test_compiled_training_keeps_the_checkpoint_names(corpus_file, tmp_path):
    """torch.compile on a CPU (about 30 s of compiling for the tiny model)."""
    compiled = pretrain(
        corpus_file, tmp_path / "compiled", "--train.max_steps", "2", "--train.compile", "true"
    )
    plain = pretrain(corpus_file, tmp_path / "plain", "--train.max_steps", "2")
    assert compiled["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-3)
    from seqgen.checkpoint import read_weights

    assert read_weights(tmp_path / "compiled" / "final").keys() == (
        read_weights(tmp_path / "plain" / "final").keys()
    )
