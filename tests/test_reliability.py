"""Never lose a trained model, never save a broken one: a diverging run stops (or skips its bad
steps) and keeps its last finite checkpoint; NaN weights are neither written nor loaded."""

import json

import pytest
import torch
from helpers import TINY_MODEL, flags

import seqgen
from seqgen.checkpoint import latest_checkpoint, read_weights, save_weights
from seqgen.cli import main
from seqgen.errors import CheckpointError
from seqgen.model import GPT

RUN = flags(
    {
        **TINY_MODEL,
        "train.batch_size": 8,
        "train.max_steps": 20,
        "train.warmup_steps": 2,
        "train.checkpoint_every_n_steps": 5,
        "train.val_every_n_steps": 100,
        "train.progress_bar": "false",
    }
)


def break_training(monkeypatch, from_step: int, until_step: int = 10**9, where: str = "loss"):
    """Training forward passes from_step..until_step-1 give a NaN loss, or a finite loss
    whose gradient is NaN (where="gradient")."""
    forward, calls = GPT.forward, {"n": 0}

    def broken(self, idx, *args, **kwargs):
        logits = forward(self, idx, *args, **kwargs)
        if not self.training:
            return logits
        step, calls["n"] = calls["n"], calls["n"] + 1
        if not from_step <= step < until_step:
            return logits
        if where == "loss":
            return logits * float("nan")
        # 0 * sqrt(x) at x = 0: the value stays finite, its gradient is 0 * inf = NaN
        return logits + 0 * torch.sqrt((logits * 0).sum())

    monkeypatch.setattr(GPT, "forward", broken)


def pretrain(corpus, out, *extra):
    report = out.parent / f"{out.name}.json"
    code = main(
        [
            "pretrain",
            "--data.source",
            str(corpus),
            "--out_dir",
            str(out),
            "--report",
            str(report),
            *RUN,
            *extra,
        ]
    )
    return code, (json.loads(report.read_text()) if report.is_file() else None)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_diverging_run_stops_and_keeps_its_last_finite_checkpoint(
    where, corpus_file, tmp_path, monkeypatch, capsys
):
    break_training(monkeypatch, from_step=12, where=where)
    code, report = pretrain(corpus_file, tmp_path / "run")
    err = capsys.readouterr().err
    assert code == 2 and report is None  # no report of a broken run
    reason = "the loss is nan" if where == "loss" else "the gradient norm is nan"
    assert f"error: training diverged at step 12: {reason}" in err
    latest = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert latest.name == "step-0000010" and f"{latest} holds the last finite weights" in err
    read_weights(latest)  # finite, usable
    assert not (tmp_path / "run" / "final").exists()


def test_bad_steps_can_be_skipped(corpus_file, tmp_path, monkeypatch, caplog):
    break_training(monkeypatch, from_step=12, until_step=14)
    code, report = pretrain(corpus_file, tmp_path / "run", "--train.max_bad_steps", "2")
    assert code == 0 and report["steps"] == 20 and report["skipped_steps"] == 2
    assert caplog.text.count("the step is skipped") == 2
    weights = read_weights(tmp_path / "run" / "final")
    assert all(torch.isfinite(t).all() for t in weights.values())


@pytest.mark.slow
def test_only_the_newest_checkpoints_are_kept(corpus_file, tmp_path):
    code, _ = pretrain(corpus_file, tmp_path / "run", "--train.keep_checkpoints", "2")
    assert code == 0
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step-0000015", "step-0000020"]


def test_nan_weights_are_never_written_nor_loaded(tmp_path, sp_tokenizer):
    config = seqgen.ModelConfig(
        vocab_size=sp_tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16
    )
    model = GPT(config)
    good = seqgen.save_model(tmp_path / "good", model, sp_tokenizer, "text")
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="refusing to write .*attn.c_attn.weight hold NaN"):
        seqgen.save_model(tmp_path / "bad", model, sp_tokenizer, "text")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()
    weights = read_weights(good)  # a hand-made (or older, unchecked) file with an infinity
    weights["transformer.ln_f.weight"][0] = float("inf")
    save_weights(weights, good / "model.safetensors")
    with pytest.raises(CheckpointError, match="ln_f.weight hold NaN or infinite values"):
        seqgen.load(good)


# ---------------------------------------------------------------- run directories


@pytest.mark.slow
def test_a_new_run_never_mixes_with_an_old_one(corpus_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain(corpus_file, run)[0] == 0
    weights = (run / "final" / "model.safetensors").read_bytes()
    code, _ = pretrain(corpus_file, run, "--train.max_steps", "10")
    assert code == 2
    assert (
        f"{run} holds a previous run (checkpoints/, final/, logs/): resume it with --resume last"
    ) in capsys.readouterr().err
    assert (run / "final" / "model.safetensors").read_bytes() == weights  # untouched
    # --overwrite removes the old run, but only once the new one is ready to train
    code, _ = pretrain(tmp_path / "missing.txt", run, "--overwrite", "true")
    assert code == 2 and (run / "final" / "model.safetensors").read_bytes() == weights
    code, report = pretrain(corpus_file, run, "--train.max_steps", "10", "--overwrite", "true")
    assert code == 0 and report["steps"] == 10
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-0000005",
        "step-0000010",
    ]
    assert len(list((run / "logs").iterdir())) == 1  # no stale step-20 to resume from
    code, report = pretrain(corpus_file, run, "--train.max_steps", "15", "--resume", "last")
    assert code == 0 and report["steps"] == 15


def test_a_run_never_replaces_its_source_model(corpus_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain(corpus_file, run)[0] == 0
    weights = (run / "final" / "model.safetensors").read_bytes()
    for out in (run, run / "final"):
        assert (
            main(
                [
                    "finetune",
                    "--task",
                    "text",
                    "--init_from",
                    str(run),
                    "--out_dir",
                    str(out),
                    "--data.source",
                    str(corpus_file),
                    "--overwrite",
                    "true",
                ]
            )
            == 2
        )
        assert "is inside --out_dir" in capsys.readouterr().err
    assert (
        main(["tokenizer", "train", "--data.source", str(corpus_file), "--out", str(run / "final")])
        == 2
    )
    assert "is a checkpoint" in capsys.readouterr().err
    assert (run / "final" / "model.safetensors").read_bytes() == weights


def test_model_settings_a_checkpoint_overrides_are_named(corpus_file, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    assert pretrain(corpus_file, run, "--train.max_steps", "10")[0] == 0
    wider = ["--model.n_embd", "64"]
    code, _ = pretrain(corpus_file, run, "--train.max_steps", "15", "--resume", "last", *wider)
    assert code == 2
    assert "model.n_embd 64 given, 32 in the checkpoint; resume with the settings" in (
        capsys.readouterr().err
    )
    tuned = tmp_path / "tuned"
    assert (
        main(
            [
                "finetune",
                "--task",
                "text",
                "--init_from",
                str(run),
                "--data.source",
                str(corpus_file),
                "--out_dir",
                str(tuned),
                *RUN,
                *wider,
            ]
        )
        == 0
    )
    assert "which brings its own model: model.n_embd 64 given, 32 in the checkpoint" in caplog.text


def test_resuming_with_other_data_options_names_each_in_a_warning(corpus_file, tmp_path, caplog):
    run = tmp_path / "run"
    assert pretrain(corpus_file, run, "--train.max_steps", "10")[0] == 0
    for saved in (run / "checkpoints").glob("*/config.json"):  # whichever `last` resumes
        meta = json.loads(saved.read_text())
        del meta["run_config"]["data"]["text_field"]  # as a run from before the option existed
        saved.write_text(json.dumps(meta))
    moved = ["--data.val_fraction", "0.2"]
    code, _ = pretrain(corpus_file, run, "--train.max_steps", "15", "--resume", "last", *moved)
    assert code == 0
    assert "with other data options: data.val_fraction 0.2 given, 0.1 when the run started; " in (
        caplog.text
    )
    assert "data.text_field 'text' given, not recorded" in caplog.text
    assert "data.source" not in caplog.text  # the same as when the run started
    caplog.clear()
    assert pretrain(corpus_file, tmp_path / "again", "--train.max_steps", "5", *moved)[0] == 0
    assert "other data options" not in caplog.text  # a new run has nothing to differ from


def test_a_budget_inside_the_warmup_is_a_warning(corpus_file, tmp_path, caplog):
    code, _ = pretrain(
        corpus_file, tmp_path / "run", "--train.max_steps", "5", "--train.warmup_steps", "8"
    )
    assert code == 0 and "the learning rate never leaves its warm-up" in caplog.text


# ---------------------------------------------------------------- hostile checkpoint configs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"n_layer": 2.5}}, "model.n_layer must be int, got 2.5"),
        ({"model": {"n_head": "2"}}, "model.n_head must be int, got '2'"),
        ({"model": {"bias": 1}}, "model.bias must be bool, got 1"),
        ({"model": {"pos_embedding": "rotary"}}, "model.pos_embedding must be one of"),
        ({"model": {"n_layers": 2}}, "unknown model config key(s): n_layers"),
        ({"model": 5}, "'model' must be an object of model settings, got 5"),
        ({"format_version": "1"}, "'format_version' must be an integer, got '1'"),
        ({"format_version": 99}, "format version 99 is newer than this seqgen reads"),
        ({"task": ["text"]}, "'task' must be a task name, got ['text']"),
        ({"task": ""}, "'task' must name a task"),
        ({"task": "nope"}, "unknown task 'nope'"),
        ({"step": "forty"}, "'step' must be an integer, got 'forty'"),
        ({"step": -3}, "'step' be >= 0"),
        ({"task_options": []}, "'task_options' must be an object, got []"),
    ],
)
def test_a_hand_edited_config_json_is_one_clear_error(
    change, message, tmp_path, sp_tokenizer, capsys
):
    config = seqgen.ModelConfig(
        vocab_size=sp_tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16
    )
    path = seqgen.save_model(tmp_path / "ckpt", GPT(config), sp_tokenizer, "text", step=3)
    meta = json.loads((path / "config.json").read_text())
    for key, value in change.items():
        meta[key] = {**meta[key], **value} if isinstance(value, dict) and key == "model" else value
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(seqgen.SeqgenError) as err:
        seqgen.load(path)
    assert message in str(err.value)
    commands = [["generate", "--ckpt", str(path), "--prompt", "the"]]
    if "unknown task" not in message:  # info tallies the model alone
        commands.append(["info", "--ckpt", str(path)])
    for command in commands:
        assert main(command) == 2
        assert message in capsys.readouterr().err


def test_hand_edited_task_options_are_one_clear_error(tmp_path, sp_tokenizer):
    from seqgen.registry import task_class

    with pytest.raises(seqgen.ConfigError, match="task_options.target_lang must be str, got 5"):
        task_class("translation").from_options({"target_lang": 5}, block_size=32)


# ---------------------------------------------------------------- configs checked at the edge


@pytest.mark.parametrize(
    ("yaml_text", "flags_given", "message"),
    [
        ("train: null\n", [], "`train:` is a section of settings"),
        ("model: 5\n", [], "`model:` is a section of settings (indented key: value lines), got 5"),
        ("data: [1, 2]\n", [], "`data:` is a section of settings"),
        ("- a\n- b\n", [], "a config maps keys to values (key: value lines), not a list"),
        ("train:\n  max_steps: forty\n", [], 'Parser key "train.max_steps"'),
        ("", ["--train.val_batches", "0"], "train.val_batches must be >= 1"),
        ("", ["--train.val_batches", "-2"], "train.val_batches must be >= 1"),
        ("", ["--train.accelerator", "foo"], "train.accelerator must be one of auto, cpu"),
        ("", ["--train.num_threads", "-1"], "train.num_threads must be >= 1"),
        (
            "",
            ["--train.max_time", "0", "--train.warmup_steps", "0"],
            "train.max_time must be longer than 0",
        ),
        ("", ["--train.grad_clip", "-1"], "train.grad_clip must be > 0 or None"),
        ("", ["--train.devices", "two"], "train.devices must be auto, a count"),
    ],
)
def test_bad_settings_fail_before_any_work(
    yaml_text, flags_given, message, corpus_file, tmp_path, capsys
):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text or "# only a comment\n")
    code, _ = pretrain(
        corpus_file,
        tmp_path / "run",
        *flags_given,
        *(["--config", str(config)] if yaml_text else []),
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and not (tmp_path / "run").exists(), err
    assert "Traceback" not in err


def test_an_empty_config_file_is_named(corpus_file, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("# only a comment\n")
    assert pretrain(corpus_file, tmp_path / "run", "--config", str(config))[0] == 2
    assert f"{config}: the config is empty" in capsys.readouterr().err


# ---------------------------------------------------------------- smaller ones


def test_outputs_are_checked_before_any_work(tmp_path, sp_tokenizer, capsys, monkeypatch):
    config = seqgen.ModelConfig(
        vocab_size=sp_tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16
    )
    ckpt = seqgen.save_model(tmp_path / "ckpt", GPT(config), sp_tokenizer, "text")
    calls = []
    monkeypatch.setattr("seqgen.inference.load", lambda *a, **k: calls.append(a))
    (tmp_path / "a_file").write_text("x")
    for out, message in (
        (tmp_path, "is a directory"),
        (tmp_path / "a_file" / "x.txt", "is a file, not a folder"),
    ):
        assert main(["generate", "--ckpt", str(ckpt), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--task",
                "translation",
                "--hypotheses",
                "h",
                "--reference",
                "r",
                "--report",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "report" in capsys.readouterr().err and not calls  # nothing loaded, nothing generated


def test_empty_reference_files_are_named(tmp_path, capsys):
    (tmp_path / "hyp.de").write_text("")
    (tmp_path / "ref.de").write_text("")
    assert (
        main(
            [
                "evaluate",
                "--task",
                "translation",
                "--hypotheses",
                str(tmp_path / "hyp.de"),
                "--reference",
                str(tmp_path / "ref.de"),
            ]
        )
        == 2
    )
    assert "ref.de: no lines to score against" in capsys.readouterr().err


def test_a_bad_option_prints_nothing_before_its_error(tmp_path, sp_tokenizer, capsys):
    config = seqgen.ModelConfig(
        vocab_size=sp_tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16
    )
    ckpt = seqgen.save_model(tmp_path / "ckpt", GPT(config), sp_tokenizer, "text")
    assert (
        main(
            [
                "generate",
                "--ckpt",
                str(ckpt),
                "--prompt",
                "the king",
                "--stop",
                "x",
                "--window_keep_oops",
                "3",
            ]
        )
        == 2
    )
    assert main(["generate", "--ckpt", str(ckpt), "--prompt", "the king", "--stop", ""]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "stop strings must not be empty" in captured.err


@pytest.mark.slow
def test_a_resumed_run_prunes_what_the_crashed_one_left(corpus_file, tmp_path):
    run = tmp_path / "run"
    assert pretrain(corpus_file, run, "--train.max_steps", "10")[0] == 0
    torn = run / "checkpoints" / "step-0000015.partial"
    torn.mkdir()  # a crash during a write
    code, _ = pretrain(corpus_file, run, "--resume", "last", "--train.keep_checkpoints", "1")
    assert code == 0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000020"]


def test_a_failed_resume_is_one_line_and_leaves_no_trace(corpus_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain(corpus_file, run, "--train.max_steps", "10")[0] == 0
    for state in run.glob("*/**/training_state.pt"):
        state.write_bytes(b"not a torch file")
    code, _ = pretrain(corpus_file, run, "--resume", "last")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "corrupt or unsafe training state" in err[-1]
    assert err[-1].startswith("error: ") and [p.name for p in (run / "logs").iterdir()] == [
        "version_0"
    ]


def test_checks_during_training_validate_on_a_spread_subset(corpus_file, tmp_path, monkeypatch):
    """train.val_batches caps each check during training, drawn across the whole validation
    set; the validation after training covers all of it, so val_loss does not change."""
    from seqgen.training.module import LMModule

    seen = []  # (fitting, windows) per validation batch
    validation_step = LMModule.validation_step

    def counted(self, batch, batch_idx):
        seen.append((self.trainer.state.fn == "fit", len(batch["input_ids"])))
        return validation_step(self, batch, batch_idx)

    monkeypatch.setattr(LMModule, "validation_step", counted)
    checks = ["--train.val_every_n_steps", "5", "--train.max_steps", "10"]
    code, whole = pretrain(corpus_file, tmp_path / "whole", *checks)
    assert code == 0
    everything = sum(n for fitting, n in seen if not fitting)
    assert sum(n for fitting, n in seen if fitting) == 2 * everything  # two full checks
    seen.clear()
    code, capped = pretrain(corpus_file, tmp_path / "capped", *checks, "--train.val_batches", "1")
    assert code == 0
    assert [n for fitting, n in seen if fitting] == [8, 8]  # one batch of 8 per check
    assert sum(n for fitting, n in seen if not fitting) == everything > 8
    assert capped["val_loss"] == whole["val_loss"]


def test_the_subset_checked_spans_the_validation_set():
    from types import SimpleNamespace

    from seqgen.training.datamodules import checked_during_fit

    fitting = SimpleNamespace(state=SimpleNamespace(fn="fit"))
    subset = checked_during_fit(list(range(100)), fitting, batches=2, batch_size=4)
    picked = list(subset.indices)
    assert len(picked) == 8 and len(set(picked)) == 8
    assert picked[0] == 0 and picked[-1] == 99 and picked == sorted(picked)
    assert checked_during_fit(list(range(5)), fitting, batches=2, batch_size=4) == list(range(5))
    assert checked_during_fit(list(range(100)), fitting, None, 4) == list(range(100))
    validating = SimpleNamespace(state=SimpleNamespace(fn="validate"))
    assert checked_during_fit(list(range(100)), validating, 2, 4) == list(range(100))
    assert checked_during_fit(list(range(100)), None, 2, 4) == list(range(100))
