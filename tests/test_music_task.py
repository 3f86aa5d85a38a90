"""The music task end to end through the CLI: pretrain on MIDI files, continue a MIDI prompt
into a MIDI file (and a piano roll), evaluate likelihood and statistics, fine-tune."""

import json
import re
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
from helpers import flags, write_song

from seqgen.cli import main
from seqgen.errors import ConfigError
from seqgen.tasks import Splits
from seqgen_tasks.music.data import load_corpus
from seqgen_tasks.music.events import (
    NOTE_OFF,
    TIME_SHIFT,
    Notes,
    cut_events,
    decode_events,
    encode_notes,
    event_steps,
)
from seqgen_tasks.music.generate import hold_limits
from seqgen_tasks.music.midi import notes_from_pretty_midi
from seqgen_tasks.music.splits import assign
from seqgen_tasks.music.task import MusicTask
from seqgen_tasks.music.tokenizer import PerformanceTokenizer

TINY = flags(
    {
        "model.n_layer": 1,
        "model.n_head": 2,
        "model.n_embd": 32,
        "model.block_size": 64,
        "model.pos_embedding": "relative",
        "train.batch_size": 8,
        "train.max_steps": 12,
        "train.learning_rate": 3e-3,
        "train.warmup_steps": 2,
        "train.val_every_n_steps": 6,
        "train.checkpoint_every_n_steps": 6,
        "train.progress_bar": "false",
    }
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("music")
    for k in range(5):
        write_song(root / "songs" / f"{k:02d}.mid", shift=k)
    (root / "songs" / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    code = main(
        [
            "pretrain",
            "--task",
            "music",
            "--data.train",
            str(root / "songs"),
            *TINY,
            "--out_dir",
            str(root / "run"),
            "--report",
            str(root / "report.json"),
        ]
    )
    assert code == 0
    return root, json.loads((root / "report.json").read_text())


def test_pretrain_on_midi_files(trained):
    root, report = trained
    assert report["steps"] == 12 and report["vocab_size"] == 391  # 388 events + pad/bos/eos
    stats = report["data_stats"]
    assert stats["files"] == 6 and stats["skipped"] == 1
    assert stats["skipped_files"][0]["file"].endswith("broken.mid")
    assert stats["skipped_files"][0]["reason"].startswith("unreadable MIDI")
    # five songs: the hash puts none in dev or test, so each takes the song of lowest hash
    songs, found = load_corpus(str(root / "songs"), str(root / "cache"))
    assert found["pieces"] == ["00", "01", "02", "03", "04"]
    assigned = assign(found["pieces"], ["dev", "test"], "songs")
    assert sorted(assigned) == ["dev", "test", "train", "train", "train"]
    assert stats["carved_from_train"] == {
        split: [f"{k:02d}" for k in range(5) if assigned[k] == split] for split in ("dev", "test")
    }
    assert (stats["train_performances"], stats["dev_performances"]) == (3, 1)
    meta = json.loads((root / "run" / "final" / "config.json").read_text())
    assert meta["task"] == "music" and meta["model"]["pos_embedding"] == "relative"
    # the hold limits of generation, from the training performances alone
    train = [song for song, split in zip(songs, assigned, strict=True) if split == "train"]
    assert meta["task_options"]["hold_limits"] == hold_limits(train)
    # what training learns is returned, not written into the task: the contract is order-free
    task = MusicTask.from_options({}, 64)
    before = task.options()
    task.training_data(Splits(songs[:4], songs[4:]), PerformanceTokenizer())
    assert task.options() == before and task.hold_limits is None
    held = Notes(np.full(200, 60), np.arange(200) * 10, np.arange(200) * 10 + 500, np.full(200, 64))
    learned = task.learned_options(Splits(songs[:4], [held]))  # dev notes held 5 s: unread
    assert learned == {"hold_limits": hold_limits(songs[:4])}
    assert learned["hold_limits"] != hold_limits([*songs[:4], held])


def test_continuation_opens_with_the_prompt(trained, tmp_path, capsys):
    root, _ = trained
    prompt = root / "songs" / "00.mid"
    out, roll = tmp_path / "out.mid", tmp_path / "roll.png"
    code = main(
        [
            "generate",
            "--ckpt",
            str(root / "run"),
            "--prompt",
            str(prompt),
            "--prompt_seconds",
            "3",
            "--seconds",
            "4",
            "--seed",
            "0",
            "--out",
            str(out),
            "--piano_roll",
            str(roll),
        ]
    )
    assert code == 0
    said = capsys.readouterr().out
    assert "3.0 s of prompt" in said
    assert re.search(r"rules all: .*\d+ notes? released when held too long \(--rules valid", said)
    assert float(re.search(r"\+ ([\d.]+) s generated", said).group(1)) >= 4.0
    given = notes_from_pretty_midi(pretty_midi.PrettyMIDI(str(prompt)))
    made = notes_from_pretty_midi(pretty_midi.PrettyMIDI(str(out)))
    # every prompt note that starts before 3 s is there, at its time, pitch and velocity bin;
    # those that ended before 3 s end as they did (the model decides when the rest end)
    before = given.start < 3 - 1e-9
    ours = made.start < 3 - 1e-9

    def key(n, m):
        return sorted(
            zip(np.round(n.start[m], 2), n.pitch[m], (n.velocity[m] - 1) // 4, strict=True)
        )

    assert key(given, before) == key(made, ours)
    ended = before & (given.end < 3 - 1e-9)
    made_ended = ours & (made.end < 3 - 1e-9)
    assert sorted(np.round(given.end[ended], 2)) == sorted(np.round(made.end[made_ended], 2))
    assert roll.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unconditional_generation_slides_past_the_context(trained, tmp_path, capsys):
    root, _ = trained
    out = tmp_path / "free.mid"
    assert (
        main(
            [
                "generate",
                "--ckpt",
                str(root / "run"),
                "--max_new_tokens",
                "150",
                "--seed",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "0.0 s of prompt" in capsys.readouterr().out
    pretty_midi.PrettyMIDI(str(out))  # a valid file (150 events > the 64-event context)


def test_generation_errors(trained, tmp_path, capsys):
    root, _ = trained
    run = str(root / "run")
    cases = [
        (["--prompt", str(tmp_path / "missing.mid")], "missing.mid: no such MIDI file"),
        (["--prompt_seconds", "2"], "prompt_seconds needs a prompt"),
        (["--seconds", "0"], "seconds must be > 0"),
        (["--soundfont", str(tmp_path / "gm.sf2")], "gm.sf2: no such file"),
    ]
    try:
        import fluidsynth  # noqa: F401
    except ImportError:
        cases.append((["--wav", str(tmp_path / "a.wav")], "wav needs FluidSynth"))
    for extra, message in cases:
        assert main(["generate", "--ckpt", run, "--out", str(tmp_path / "x.mid"), *extra]) != 0
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x.mid").exists()  # failed before generating anything


def test_likelihood_equals_validation_and_statistics_overlap(trained, tmp_path, capsys):
    root, report = trained

    def likelihood(*where: str) -> dict:
        out = tmp_path / "nll.json"
        argv = ["evaluate", "--ckpt", str(root / "run"), *where]
        assert main([*argv, "--report", str(out)]) == 0
        return json.loads(out.read_text())["likelihood"]

    # without --data, the checkpoint's own splits, as its training config carved them
    dev, test = report["data_stats"]["carved_from_train"]["dev"], likelihood("--split", "test")
    nll = likelihood("--split", "dev")
    assert nll["nll_per_event"] == pytest.approx(report["val_loss"], rel=1e-4)
    assert nll["data"] == "dev split of the checkpoint's training data" and nll["files"] == 1
    same = likelihood("--data", str(root / "songs" / f"{dev[0]}.mid"))
    assert same.keys() == nll.keys()
    for key, value in nll.items():  # scored twice: under load other kernels can win the timing
        if key not in ("data", "seconds"):
            assert same[key] == (
                pytest.approx(value, rel=1e-6) if isinstance(value, float) else value
            )
    test_song = str(root / "songs" / f"{report['data_stats']['carved_from_train']['test'][0]}.mid")
    test_again = likelihood("--data", test_song)["nll_per_event"]
    assert test["nll_per_event"] == pytest.approx(test_again, rel=1e-6)
    assert test["nll_per_event"] != nll["nll_per_event"]
    assert nll["music_seconds"] == pytest.approx(11.95)  # the last release
    assert nll["nll_per_second"] == pytest.approx(nll["nll_per_event"] * nll["events"] / 11.95)
    assert main(["evaluate", "--ckpt", str(root / "run"), "--split", "train"]) == 2
    assert "split must be dev or test without data, got 'train'" in capsys.readouterr().err
    write_song(tmp_path / "high" / "a.mid", shift=1)  # other pitch classes than song 00
    songs = root / "songs"

    def overlap(generated, real, *ckpt: str):
        out = tmp_path / "stats.json"
        argv = ["evaluate", "--task", "music", "--generated", str(generated), *ckpt]
        assert main([*argv, *(["--data", str(real)] if real else []), "--report", str(out)]) == 0
        return json.loads(out.read_text())["statistics"]["overlap"]

    same = overlap(songs / "00.mid", songs / "00.mid")
    assert same == pytest.approx(
        {
            "pitch_class": 1,
            "velocity": 1,
            "note_density": 1,
            "ioi": 1,
            "duration": 1,
            "polyphony": 1,
        }
    )
    moved = overlap(tmp_path / "high", songs / "00.mid")
    assert moved["pitch_class"] == pytest.approx(0.0)  # C E G vs C# F G#: nothing shared
    assert moved["ioi"] == pytest.approx(1.0) and moved["velocity"] == pytest.approx(1.0)
    assert moved["duration"] == pytest.approx(1.0) and moved["polyphony"] == pytest.approx(1.0)
    # with a checkpoint and no data, the generated music is compared with its test split
    ours = overlap(songs / "00.mid", None, "--ckpt", str(root / "run"))
    assert ours == overlap(songs / "00.mid", test_song)


def steps(*notes: tuple[int, float, float]) -> Notes:
    """Notes from (pitch, start s, end s), in 10 ms steps."""
    pitch, start, end = (np.array([n[i] for n in notes]) for i in range(3))
    return Notes(
        pitch,
        np.round(start * 100).astype(int),
        np.round(end * 100).astype(int),
        np.full(len(notes), 64),
    )


def test_durations_polyphony_and_failures_are_counted_in_time():
    from seqgen_tasks.music.statistics import failures, histogram_table, sounding

    def features(performances):  # each statistic's histogram, normalised
        return {k: v.sum(axis=0) / v.sum() for k, v in histogram_table(performances).items()}

    chord = [(60 + k, 10.0, 11.0) for k in range(12)]  # 12 notes for 1 s: crowded
    piece = steps((40, 0.0, 5.0), (50, 1.0, 2.0), *chord)  # silent from 5 s to 10 s
    assert sounding(piece).tolist() == [1] * 100 + [2] * 100 + [1] * 300 + [0] * 500 + [12] * 100
    click = steps((40, 0.0, 5.0), (52, 1.0, 1.04))
    found = features([piece])
    assert found["polyphony"][[0, 1, 2, 12]] == pytest.approx([5 / 11, 4 / 11, 1 / 11, 1 / 11])
    assert found["duration"].sum() == pytest.approx(1.0)
    assert failures([piece]) == pytest.approx(
        {
            "long_notes_fraction": 1 / 14,  # the 5 s note
            "short_notes_fraction": 0.0,
            "silences_per_minute": 1 / (11 / 60),  # 5 s of silence in 11 s
            "crowded_fraction": 1 / 11,
        }
    )
    assert failures([piece], long_note_seconds=6, silence_seconds=5, crowded_notes=12) == {
        "long_notes_fraction": 0.0,
        "short_notes_fraction": 0.0,
        "silences_per_minute": 0.0,
        "crowded_fraction": 0.0,
    }
    assert failures([piece, click])["short_notes_fraction"] == 1 / 16  # the 40 ms note
    assert failures([click], short_note_seconds=0.04)["short_notes_fraction"] == 0.0
    silent = Notes.empty()  # a window in which nothing was played adds nothing
    assert failures([piece, silent]) == failures([piece])
    with_silent = features([silent, piece])
    assert all(np.array_equal(with_silent[k], found[k]) for k in found)
    assert failures([silent])["long_notes_fraction"] == 0.0


def test_evaluation_options_are_checked():
    from seqgen_tasks.music.evaluate import MusicEval

    with pytest.raises(ValueError, match="nothing to evaluate: give ckpt"):
        MusicEval(data="held_out/")
    with pytest.raises(ValueError, match="generated is compared with the real music: give data"):
        MusicEval(generated="ours")
    with pytest.raises(ValueError, match="seconds continues the real music with a model"):
        MusicEval(generated="ours", data="held_out/", seconds=30)
    with pytest.raises(ValueError, match="split must be dev or test without data, got 'val'"):
        MusicEval(ckpt="run", split="val")
    assert MusicEval(ckpt="run").split == "test"
    with pytest.raises(ValueError, match="nothing to evaluate"):
        MusicEval()
    with pytest.raises(ValueError, match="seconds must be > 0, got 0"):
        MusicEval(ckpt="run", seconds=0)
    with pytest.raises(ConfigError, match="rules must be one of 'valid', 'all', got 'few'"):
        MusicEval(generated="ours", data="theirs", rules="few")
    with pytest.raises(ValueError, match="bootstrap_samples must be >= 1"):
        MusicEval(ckpt="run", bootstrap_samples=0)


def test_notes_held_open_show_in_the_duration_overlap():
    from seqgen_tasks.music.statistics import failures, overlap

    played = steps(*[(60 + n % 5, n * 0.5, n * 0.5 + 0.4) for n in range(40)])
    held = steps(*[(60 + n % 5, n * 0.5, n * 0.5 + 12.0) for n in range(40)])  # never released
    found = overlap([held], [played])
    assert found["ioi"] == pytest.approx(1.0) and found["pitch_class"] == pytest.approx(1.0)
    assert found["duration"] == 0.0 and found["polyphony"] < 0.1
    assert failures([held])["long_notes_fraction"] == 1.0
    assert failures([played])["long_notes_fraction"] == 0.0


def test_resampled_overlap_equals_the_overlap_of_each_resampled_set():
    from seqgen_tasks.music.statistics import bootstrap_weights, overlap, resampled_overlap

    rng = np.random.default_rng(3)

    def song(count: int) -> Notes:
        start = np.sort(rng.integers(0, 2000, count))
        end = start + rng.integers(1, 400, count)
        return Notes(rng.integers(21, 109, count), start, end, rng.integers(1, 128, count))

    ours = [song(int(n)) for n in (0, 5, 40, 90, 17, 1)]  # an empty one too
    theirs = [song(int(n)) for n in (30, 8, 60, 12, 44, 3)]
    weights = bootstrap_weights(len(ours), 20, seed=7)
    assert weights.shape == (20, 6) and (weights.sum(axis=1) == 6).all()
    draws = np.random.default_rng(7)
    found = resampled_overlap(ours, theirs, weights)
    for r in range(20):
        drawn = draws.integers(0, 6, 6)  # the draws the weights count, in order
        assert weights[r].tolist() == np.bincount(drawn, minlength=6).tolist()
        expected = overlap([ours[i] for i in drawn], [theirs[i] for i in drawn])
        assert {k: float(v[r]) for k, v in found.items()} == expected
    with pytest.raises(ValueError, match="6 and 5 performances for weights of 6"):
        resampled_overlap(ours, theirs[:5], weights)


def test_finetune_keeps_the_vocabulary(trained, tmp_path):
    root, _ = trained
    for k in range(3):
        write_song(tmp_path / "other" / f"{k}.mid", shift=-k, notes=32)
    report = tmp_path / "ft.json"
    code = main(
        [
            "finetune",
            "--task",
            "music",
            "--init_from",
            str(root / "run"),
            "--data.train",
            str(tmp_path / "other"),
            "--train.max_steps",
            "4",
            "--train.batch_size",
            "4",
            "--train.progress_bar",
            "false",
            "--out_dir",
            str(tmp_path / "ft"),
            "--report",
            str(report),
        ]
    )
    assert code == 0
    result = json.loads(report.read_text())
    assert result["vocab_size"] == 391 and result["init_from"].endswith("final")


def test_pretrain_with_a_task_refuses_a_start_checkpoint(trained, capsys):
    root, _ = trained
    assert main(["pretrain", "--task", "music", "--init_from", str(root / "run")]) != 0
    assert "seqgen finetune --init_from" in capsys.readouterr().err


def test_cut_events_keeps_the_opening_and_lands_on_the_cut():
    task = MusicTask()
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    piano.notes += [
        pretty_midi.Note(80, 60, 0.0, 0.5),
        pretty_midi.Note(80, 64, 0.4, 2.5),
        pretty_midi.Note(80, 67, 1.5, 1.7),
    ]
    midi.instruments.append(piano)
    events = np.array(task.prompt(midi, _tokenizer())[1:])
    head = cut_events(events, 150)  # 1.5 s: the note at exactly 1.5 s is left out
    assert event_steps(head)[-1] == 150 and head[-1] == TIME_SHIFT + 100  # from 0.5 s on
    assert NOTE_OFF + 64 not in head  # still sounding at the cut: left open
    notes = decode_events(head)
    assert notes.pitch.tolist() == [60, 64] and notes.end.tolist() == [50, 150]
    long_gap = cut_events(encode_notes(decode_events(events)), 1000)
    assert event_steps(long_gap)[-1] == 1000  # the last release at 2.5 s, then 7.5 s of rest
    assert list(long_gap[-8:]) == [TIME_SHIFT + 100] * 7 + [TIME_SHIFT + 50]
    assert len(cut_events(events, 0)) == 0


def _tokenizer():
    from seqgen_tasks.music.tokenizer import PerformanceTokenizer

    return PerformanceTokenizer()


def test_wav_rendering_when_fluidsynth_is_installed(trained, tmp_path):
    pytest.importorskip("fluidsynth", exc_type=ImportError)  # no libfluidsynth: ImportError
    import wave

    root, _ = trained
    out, audio = tmp_path / "w.mid", tmp_path / "w.wav"
    argv = [
        "generate",
        "--ckpt",
        str(root / "run"),
        "--prompt",
        str(root / "songs" / "00.mid"),
        "--prompt_seconds",
        "2",
        "--seconds",
        "2",
        "--seed",
        "0",
        "--out",
        str(out),
        "--wav",
        str(audio),
    ]
    assert main(argv) == 0
    with wave.open(str(audio)) as rendered:
        assert rendered.getframerate() == 44_100 and rendered.getsampwidth() == 2
        assert rendered.getnframes() / 44_100 >= pretty_midi.PrettyMIDI(str(out)).get_end_time()
    soundfont = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")  # Debian's fluid-soundfont-gm
    if soundfont.is_file():
        again = tmp_path / "gm.wav"
        assert main([*argv[:-2], "--wav", str(again), "--soundfont", str(soundfont)]) == 0
        with wave.open(str(again)) as rendered, wave.open(str(audio)) as plain:
            assert rendered.readframes(-1) != plain.readframes(-1)  # another sound font


def test_generate_help_for_music(capsys):
    with pytest.raises(SystemExit) as done:
        main(["generate", "--task", "music", "--help"])
    assert done.value.code == 0 and "--prompt_seconds" in capsys.readouterr().out


def test_a_real_continuation_follows_its_prompt_note_for_note(tmp_path):
    from seqgen_tasks.music.continuation import events_after, window
    from seqgen_tasks.music.events import canonical_notes, quantize

    write_song(tmp_path / "song.mid", shift=0)
    midi = pretty_midi.PrettyMIDI(str(tmp_path / "song.mid"))
    notes = canonical_notes(quantize(notes_from_pretty_midi(midi)))
    events = encode_notes(notes).astype(np.int64)
    begin, end = 250, 700  # a cut inside held bass notes, and one before the song ends
    prompt = cut_events(events, begin).tolist()
    played = decode_events(prompt + events_after(events, begin, end))
    # the prompt and the real continuation decode, over the window, to the song's notes
    ours, theirs = window(played, begin, end).sorted(), window(notes, begin, end).sorted()
    for field in ("pitch", "start", "end", "velocity"):
        assert getattr(ours, field).tolist() == getattr(theirs, field).tolist()
    assert theirs.start.min() == 0 and theirs.end.max() == end - begin
    assert (theirs.end > theirs.start).all() and len(theirs) > 10


def test_strided_nll_gives_each_event_half_a_context_at_least():
    import torch

    from seqgen.config import ModelConfig
    from seqgen.model import GPT
    from seqgen_tasks.music.continuation import strided_nll

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=30, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    ids = torch.randint(0, 30, (20,)).tolist()
    total, count = strided_nll(model, ids, 3)
    expected = 0.0
    with torch.no_grad():
        for t in range(3, 20):
            context = ids[max(0, t - 8) : t]  # the most context a window could give
            logits = model(torch.tensor([context]))[0, -1]
            expected += torch.nn.functional.cross_entropy(logits[None], torch.tensor([ids[t]]))
    assert count == 17
    assert total >= 0 and abs(total - expected.item()) < 0.35 * count  # shorter contexts differ
    short, _ = strided_nll(model, ids[:8], 3)  # all within one window: exact
    with torch.no_grad():
        logits = model(torch.tensor([ids[:7]]))[0, 2:]
    exact = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[3:8]), reduction="sum")
    assert short == pytest.approx(exact.item(), rel=1e-5)


def test_continuations_of_held_out_performances(trained, tmp_path):
    root, _ = trained
    out = tmp_path / "continuation.json"
    argv = [
        "evaluate",
        "--task",
        "music",
        "--ckpt",
        str(root / "run"),
        "--data",
        str(root / "songs" / "04.mid"),
        "--seconds",
        "4",
        "--prompt_seconds",
        "3",
        "--bootstrap_samples",
        "20",
        "--report",
        str(out),
    ]
    assert main(argv) == 0
    found = json.loads(out.read_text())["continuation"]
    assert found["performances"] == 1 and found["too_short"] == 0
    keys = {"pitch_class", "velocity", "note_density", "ioi", "duration", "polyphony", "mean"}
    assert set(found["overlap"]) == keys and set(found["overlap_interval"]) == keys
    assert all(0.0 <= v <= 1.0 for v in found["overlap"].values())
    assert found["nll_per_event_real"] > 0 and found["events_generated"] > 0
    assert set(found["failures"]["real"]) == {
        "long_notes_fraction",
        "short_notes_fraction",
        "silences_per_minute",
        "crowded_fraction",
    }
    # the song repeats every 2 s: the performer's next 4 s are nearly the real continuation
    assert found["performer_later"]["performances"] == 1
    assert 0.95 < found["performer_later"]["overlap"]["mean"] <= 1.0
    assert len(found["hold_limits"]) == 11 and found["released_when_held_too_long"] >= 0
    assert "shortest_holds" not in found
    assert main([*argv[:-2], "--seconds", "60"]) == 2  # longer than the song


def test_a_clock_keeps_each_rows_time_and_reports_it():
    from seqgen_tasks.music.generate import Clock

    told = []
    clock = Clock(100, on_time=told.append)
    first, second = [TIME_SHIFT + 60], [60, TIME_SHIFT + 30]  # two rows, told apart
    assert not clock(first) and not clock(second)
    first += [64, TIME_SHIFT + 70]  # past the end: only 40 more steps count
    assert clock(first) and not clock(second)
    assert told == [60, 30, 40]


def test_music_has_15_options_of_its_own():
    """The music task's own settings (data, generation, evaluation), each declared once;
    the core's (decoding, devices, reports) are shared by every task."""
    from dataclasses import fields

    from seqgen.evaluation import DecodingEval
    from seqgen_tasks.music.evaluate import MusicEval
    from seqgen_tasks.music.generate import MusicGenerate
    from seqgen_tasks.music.task import MusicData

    core = {f.name for f in fields(DecodingEval)}
    own = {f.name for c in (MusicData, MusicGenerate, MusicEval) for f in fields(c)} - core
    assert sorted(own) == sorted(
        ["train", "val", "test", "augment", "note_state", "release_weight"]
        + ["prompt_seconds", "seconds", "rules"]
        + ["piano_roll", "wav", "soundfont"]
        + ["data", "split", "generated"]
    )
