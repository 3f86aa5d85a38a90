"""The rules music generation follows as ids arrive (`NoteRules`): releases only of notes
that are sounding, and a note released once it has sounded its hold limit, derived from the
training data per octave, stored in the checkpoint and reported in the output."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch

from seqgen.cli import main
from seqgen.errors import ConfigError
from seqgen.inference import load
from seqgen_tasks.music.events import NOTE_OFF, NOTE_ON, TIME_SHIFT, Notes, decode_events
from seqgen_tasks.music.generate import (
    HOLD_QUANTILE,
    OCTAVES,
    VOCAB,
    MusicGenerate,
    NoteRules,
    hold_limits,
    released_notes,
    rule_processor,
)
from seqgen_tasks.music.task import MusicTask

OLD_MUSIC = Path(__file__).parent / "fixtures" / "checkpoints_v1" / "music"


def test_hold_limits_are_each_octaves_quantile_of_the_training_notes():
    rng = np.random.default_rng(0)
    pitch = np.r_[np.full(400, 60), np.full(400, 36), np.full(10, 100)]  # octaves 5, 3, 8
    duration = np.r_[rng.integers(10, 50, 400), rng.integers(100, 500, 400), [900] * 10]
    start = np.arange(len(pitch)) * 10
    songs = [
        Notes(pitch[:500], start[:500], start[:500] + duration[:500], np.full(500, 64)),
        Notes(pitch[500:], start[500:], start[500:] + duration[500:], np.full(310, 64)),
    ]
    limits = hold_limits(songs)
    assert len(limits) == OCTAVES
    for octave, notes in ((5, duration[:400]), (3, duration[400:800])):
        assert limits[octave] == round(np.quantile(notes, HOLD_QUANTILE) / 100, 2)
    # an octave with too few notes gets the quantile of all the notes
    overall = round(np.quantile(duration, HOLD_QUANTILE) / 100, 2)
    assert limits[8] == limits[0] == overall != limits[5]
    assert hold_limits(songs, 0.5)[5] == round(np.quantile(duration[:400], 0.5) / 100, 2)
    one_step = [Notes(np.full(60, 60), np.arange(60), np.arange(60) + 1, np.full(60, 64))]
    assert hold_limits(one_step)[5] == 0.01  # never rounded down to nothing
    with pytest.raises(ValueError, match="need notes"):
        hold_limits([Notes.empty()])


def test_rules_follow_the_prompt_and_release_a_note_at_its_limit():
    limits = [1.0] * OCTAVES  # 100 steps for every pitch
    # 60 struck at 0 and at 50, one release (of the first): the open one dates from 50
    prompt = [389, 60, TIME_SHIFT + 50, 60, NOTE_OFF + 60, 64, NOTE_OFF + 64]
    rules = NoteRules(prompt, limits=limits)
    assert rules.sounding[60] == 1 and rules.sounding[64] == 0 and rules.now == 50
    assert NOTE_OFF + 64 in rules.banned() and NOTE_OFF + 60 not in rules.banned()
    rules.add(TIME_SHIFT + 99)  # 99 steps since 50: not yet
    assert len(rules.banned()) < 200
    rules.add(62)  # struck at 149
    rules.add(TIME_SHIFT + 1)  # 60 has sounded 100 steps: only its release is allowed
    assert set(range(391)) - set(rules.banned()) == {NOTE_OFF + 60}
    rules.add(NOTE_OFF + 60)
    assert rules.released == 1 and NOTE_OFF + 62 not in rules.banned()
    rules.add(TIME_SHIFT + 100)
    assert set(range(391)) - set(rules.banned()) == {NOTE_OFF + 62}
    # the same ids without a limit: nothing is forced, nothing counted
    free = NoteRules(prompt)
    for token in (TIME_SHIFT + 100, 62, TIME_SHIFT + 100):
        free.add(token)
    assert NOTE_ON + 1 not in free.banned() and free.released == 0


def test_rules_valid_keeps_only_releases_of_sounding_notes_and_all_adds_the_stored_limits():
    limits = [0.3] * OCTAVES
    valid = rule_processor("valid", limits)([389, 60])
    assert valid.sounding_only and valid.limits is None
    every = rule_processor("all", limits)([389, 60])
    assert every.sounding_only and every.limits[60] == 30
    assert rule_processor("all", None)([389, 60]).limits is None  # a checkpoint without them
    with pytest.raises(ValueError, match="rules must be one of valid, all, got 'none'"):
        rule_processor("none", limits)
    with pytest.raises(ValueError, match="rules must be one of"):
        MusicGenerate(rules="some")


def test_a_pitch_struck_twice_is_released_twice_and_its_limit_follows_the_newer_note():
    rules = NoteRules([389, 60, TIME_SHIFT + 40, 60], limits=[0.5] * OCTAVES)
    assert rules.sounding[60] == 2 and NOTE_OFF + 60 not in rules.banned()
    rules.add(NOTE_OFF + 60)  # ends the older note, struck at 0 (not overdue: 40 steps)
    assert rules.released == 0 and rules.sounding[60] == 1
    rules.add(TIME_SHIFT + 49)  # the newer note, struck at 40, has sounded 49 steps
    assert len(rules.banned()) < 200
    rules.add(TIME_SHIFT + 1)
    assert set(range(391)) - set(rules.banned()) == {NOTE_OFF + 60}
    rules.add(NOTE_OFF + 60)
    assert rules.released == 1 and NOTE_OFF + 60 in rules.banned()  # silent again
    anything = NoteRules([389, 60], sounding_only=False)
    assert anything.banned() == []  # nothing ruled at all


def releases_of_silent_notes(prompt: list[int], new: list[int]) -> int:
    sounding = NoteRules(prompt)
    orphans = 0
    for token in new:
        orphans += NOTE_OFF <= token < NOTE_OFF + 128 and token in sounding.banned()
        sounding.add(token)
    return orphans


@pytest.mark.slow
def test_generation_releases_only_sounding_notes_and_none_held_past_the_limit():
    generator = load(OLD_MUSIC)
    prompt = [generator.tokenizer.bos_id, 60, 64, 67, TIME_SHIFT + 50]
    options = dict(temperature=2.0, max_new_tokens=400, min_new_tokens=400, seed=1)
    free = generator.continue_ids(prompt, **options)
    sounding_only = generator.continue_ids(
        prompt, processor=rule_processor("valid", None), **options
    )
    assert releases_of_silent_notes(prompt, free) > 0  # a tiny model releases at random
    assert releases_of_silent_notes(prompt, sounding_only) == 0
    limits = [0.3] * OCTAVES
    held = generator.continue_ids(prompt, processor=rule_processor("all", limits), **options)
    assert releases_of_silent_notes(prompt, held) == 0

    def longest(new: list[int]) -> int:
        notes = decode_events(prompt[1:] + new)
        return int((notes.end - notes.start).max())

    # released at the first event after 30 steps: a time shift moves up to 100 past it
    assert longest(free) > 130 >= longest(held)
    assert released_notes(prompt, held, limits) > 0 == released_notes(prompt, held, None)


def test_stored_limits_are_checked_and_older_checkpoints_have_none(tmp_path, capsys):
    task = MusicTask.from_options({"hold_limits": [2.5] * OCTAVES}, 64)
    assert task.hold_limits == [2.5] * OCTAVES and task.options()["hold_limits"] == task.hold_limits
    for bad in ([2.5] * 3, [0.0] * OCTAVES, "2.5", [True] * OCTAVES):
        with pytest.raises(ConfigError, match="hold_limits must be 11 seconds > 0"):
            MusicTask.from_options({"hold_limits": bad}, 64)
    # checkpoints from when generation also held notes a shortest time still load
    older = MusicTask.from_options({"shortest_holds": [0.05] * OCTAVES}, 64)
    assert older.hold_limits is None and "shortest_holds" not in older.options()
    assert load(OLD_MUSIC).task.hold_limits is None
    argv = [
        "generate",
        "--ckpt",
        str(OLD_MUSIC),
        "--seed",
        "0",
        "--max_new_tokens",
        "60",
        "--out",
        str(tmp_path / "out.mid"),
    ]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "rules all: releases only of sounding notes" in said
    assert "no note-length limits stored in this checkpoint" in said
    assert main([*argv, "--rules", "valid"]) == 0
    assert "rules valid: releases only of sounding notes)" in capsys.readouterr().out
    assert main([*argv, "--rules", "none"]) == 2
    assert "rules" in capsys.readouterr().err
    # a checkpoint that stores its training data's limits: generation keeps to them
    stored = tmp_path / "stored"
    shutil.copytree(OLD_MUSIC, stored)
    config = json.loads((stored / "config.json").read_text())
    config["task_options"].update(hold_limits=[0.2] * OCTAVES, shortest_holds=[0.05] * OCTAVES)
    (stored / "config.json").write_text(json.dumps(config))
    assert main([*argv[:2], str(stored), *argv[3:]]) == 0
    said = capsys.readouterr().out
    assert re.search(r"\d+ notes? released when held too long \(--rules valid", said)
    written = pretty_midi.PrettyMIDI(str(tmp_path / "out.mid")).instruments[0].notes
    assert max(note.end - note.start for note in written) < 0.2 + 1.0


def test_a_banned_releases_probability_goes_to_every_event_allowed():
    # 60 and 64 sound: releasing any other pitch is banned
    prompt = [389, NOTE_ON + 60, TIME_SHIFT + 50, NOTE_ON + 64, TIME_SHIFT + 2]
    logits = torch.randn(VOCAB, generator=torch.Generator().manual_seed(0))
    before = torch.softmax(logits, -1)
    after = torch.softmax(NoteRules(prompt)([], logits.clone()), -1)
    releases = slice(NOTE_OFF, NOTE_OFF + 128)
    assert after[releases].nonzero().flatten().tolist() == [60, 64]
    # the events allowed keep the model's proportions, renormalised
    allowed = before.clone()
    allowed[NOTE_OFF : NOTE_OFF + 128] = 0
    allowed[[NOTE_OFF + 60, NOTE_OFF + 64]] = before[[NOTE_OFF + 60, NOTE_OFF + 64]]
    assert torch.allclose(after, allowed / allowed.sum(), rtol=1e-5)


def test_note_rules_copies_follow_their_own_beams():
    rules = NoteRules([389, NOTE_ON + 60, TIME_SHIFT + 10])
    logits = torch.zeros(VOCAB)
    rules([], logits.clone())
    twin = rules.copy()
    rules([NOTE_ON + 64], logits.clone())  # one beam strikes 64, the other releases 60
    twin([NOTE_OFF + 60], logits.clone())
    assert rules.sounding[[60, 64]].tolist() == [1, 1]
    assert twin.sounding[[60, 64]].tolist() == [0, 0]


def test_paired_difference_says_which_arm_plays_closer_to_the_performer():
    from seqgen_tasks.music.continuation import Played, paired_difference

    rng = np.random.default_rng(0)

    def song(length: float, count: int = 30) -> Notes:
        starts = np.sort(rng.integers(0, 2900, count))
        ends = starts + round(length * 100)
        return Notes(rng.integers(40, 90, count), starts, ends, rng.integers(40, 100, count))

    real = [song(0.4) for _ in range(12)]

    def arm(played: list[Notes]) -> Played:
        return Played(real, played, real, [], [], None)

    close, held = arm([song(0.4) for _ in real]), arm([song(6.0) for _ in real])
    found = paired_difference([(held, close), (held, close)], samples=200)
    assert found["difference"] > 0 and 0 < found["low"] <= found["high"]
    assert found["share_above_zero"] == 1.0
    assert paired_difference([(close, held)], samples=200)["difference"] == -found["difference"]
    same = paired_difference([(close, close)], samples=50)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0, "share_above_zero": 0.0}
    with pytest.raises(ValueError, match="the same performances"):
        paired_difference([(close, arm(real[:5]))])
