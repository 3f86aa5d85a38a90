"""Performance events: the encoding spec case by case, round-trip properties, and the two MIDI
parsers agreeing."""

import numpy as np
import pretty_midi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqgen_tasks.music.events import (
    Notes,
    canonical_notes,
    decode_events,
    encode_notes,
    quantize,
    sustain,
)
from seqgen_tasks.music.midi import decode_midi, encode_midi, notes_from_pretty_midi

ON, OFF = 0, 128


def shift(n):
    return 255 + n


def vel(bin_):
    return 355 + bin_


def notes(*rows):
    """(pitch, start s, end s, velocity) rows -> Notes."""
    pitch, start, end, velocity = zip(*rows, strict=True)
    return Notes(np.array(pitch), np.array(start, float), np.array(end, float), np.array(velocity))


def encode(*rows):
    return encode_notes(quantize(notes(*rows))).tolist()


def test_a_chord():
    chord = encode((67, 0.0, 0.5, 80), (60, 0.0, 0.5, 80), (64, 0.0, 0.5, 80))
    assert chord == [vel(20), ON + 60, ON + 64, ON + 67, shift(50), OFF + 60, OFF + 64, OFF + 67]


def test_long_gaps_repeat_the_longest_shift_then_the_remainder():
    events = encode((60, 0.0, 0.1, 80), (62, 2.57, 2.67, 80))
    assert events == [
        vel(20),
        ON + 60,
        shift(10),
        OFF + 60,
        shift(100),
        shift(100),
        shift(47),
        ON + 62,
        shift(10),
        OFF + 62,
    ]
    assert encode((60, 1.0, 2.0, 80))[:2] == [shift(100), vel(20)]  # time starts at 0


def test_velocity_events_only_when_the_bin_changes():
    events = encode((60, 0.0, 0.1, 80), (62, 0.1, 0.2, 77), (64, 0.2, 0.3, 100))
    # 77 and 80 share bin 20 (77-80); 100 is bin 25
    assert events == [
        vel(20),
        ON + 60,
        shift(10),
        OFF + 60,
        ON + 62,
        shift(10),
        OFF + 62,
        vel(25),
        ON + 64,
        shift(10),
        OFF + 64,
    ]


def test_rounding_half_up_and_one_step_minimum():
    assert encode((60, 0.004, 0.1, 64))[:2] == [vel(16), ON + 60]  # 0.4 steps -> 0
    assert encode((60, 0.006, 0.1, 64))[:3] == [shift(1), vel(16), ON + 60]
    assert encode((60, 0.101, 0.104, 64)) == [shift(10), vel(16), ON + 60, shift(1), OFF + 60]


def test_offs_come_before_ons_within_a_step():
    events = encode((62, 0.5, 1.0, 64), (60, 0.0, 0.5, 64))
    assert events[2:5] == [shift(50), OFF + 60, ON + 62]


def test_sustain_pedal_holds_released_notes_until_lift_or_restrike():
    played = notes(
        (60, 0.0, 0.2, 80),
        (60, 0.5, 0.6, 80),
        (64, 0.0, 0.05, 80),
        (67, 0.0, 1.0, 80),
        (72, 0.3, 0.4, 80),
    )
    times, values = np.array([0.1, 0.3, 1.0, 1.2]), np.array([127, 100, 0, 64])
    held = sustain(played, times, values)
    # 60 is struck again at 0.5, ends there; the re-struck 60 and 72 hold until the lift at
    # 1.0; 64 was released before the pedal; 67 is released exactly at the lift: not held
    assert held.end.tolist() == [0.5, 1.0, 0.05, 1.0, 1.0]
    never_lifted = sustain(
        notes((60, 0.0, 0.2, 80), (62, 0.0, 0.9, 80)), np.array([0.1]), np.array([127])
    )
    assert never_lifted.end.tolist() == [0.9, 0.9]
    never_pressed = sustain(played, np.array([0.1, 0.5]), np.array([0, 30]))  # e.g. POP909
    assert never_pressed.end.tolist() == played.end.tolist()


def test_same_pitch_restrike_round_trips():
    restrike = quantize(notes((60, 0.0, 0.5, 80), (60, 0.5, 1.0, 90)))
    events = encode_notes(restrike).tolist()
    assert events == [vel(20), ON + 60, shift(50), OFF + 60, vel(23), ON + 60, shift(50), OFF + 60]
    decoded = decode_events(events)
    assert decoded.start.tolist() == [0, 50] and decoded.end.tolist() == [50, 100]
    assert decoded.velocity.tolist() == [77, 89]  # each bin's velocity


def test_instruments_merge_and_drums_are_skipped():
    midi = pretty_midi.PrettyMIDI()
    for program, is_drum, pitch in ((0, False, 60), (33, False, 40), (0, True, 36)):
        instrument = pretty_midi.Instrument(program, is_drum=is_drum)
        instrument.notes.append(pretty_midi.Note(velocity=80, pitch=pitch, start=0.0, end=0.5))
        midi.instruments.append(instrument)
    assert sorted(notes_from_pretty_midi(midi).pitch.tolist()) == [40, 60]


def test_decoding_is_lenient():
    notes_ = decode_events(
        [
            ON + 60,
            OFF + 61,
            400,
            shift(5),
            ON + 60,
            shift(5),
            OFF + 60,
            OFF + 60,
            OFF + 60,
            ON + 62,
            ON + 64,
            OFF + 64,
            shift(3),
        ]
    )
    # the OFF 60s close the oldest 60 first; OFF 61 and the third OFF 60 close nothing; 400 is
    # not an event; 64 has zero length; 62 is never closed and ends at the last step
    assert list(
        zip(notes_.pitch.tolist(), notes_.start.tolist(), notes_.end.tolist(), strict=True)
    ) == [(60, 0, 10), (60, 5, 10), (62, 10, 13)]
    assert notes_.velocity.tolist() == [64, 64, 64]  # no VELOCITY event: the default


# ---------------------------------------------------------------- properties

note_rows = st.lists(
    st.tuples(st.integers(0, 127), st.floats(0, 30), st.floats(0.0, 4.0), st.integers(1, 127)),
    max_size=40,
)


def performance(rows) -> Notes:
    if not rows:
        return Notes.empty()
    return notes(*((p, s, s + d, v) for p, s, d, v in rows))


@settings(max_examples=150, deadline=None)
@given(note_rows)
def test_decode_of_encode_is_the_quantised_performance(rows):
    steps = quantize(performance(rows))
    decoded = decode_events(encode_notes(steps))
    expected = canonical_notes(steps)
    for field in ("pitch", "start", "end", "velocity"):
        assert getattr(decoded, field).tolist() == getattr(expected, field).tolist()


@settings(max_examples=150, deadline=None)
@given(note_rows)
def test_encode_of_decode_is_identity_on_valid_events(rows):
    events = encode_notes(quantize(performance(rows)))
    assert encode_notes(decode_events(events)).tolist() == events.tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-5, 400), max_size=200))
def test_any_id_sequence_decodes(ids):
    decoded = decode_events(ids)
    assert (decoded.end > decoded.start).all()
    assert ((decoded.pitch >= 0) & (decoded.pitch < 128)).all()


# ---------------------------------------------------------------- MIDI files


@pytest.fixture
def midi_file(tmp_path):
    midi = pretty_midi.PrettyMIDI(initial_tempo=93.0)
    rng = np.random.default_rng(0)
    for program in (0, 4):
        instrument = pretty_midi.Instrument(program)
        free_at = {}  # a key sounds once at a time (parsers pair overlapping notes differently)
        for start in np.sort(rng.uniform(0, 20, 60)).tolist():
            pitch = int(rng.integers(21, 109))
            if start < free_at.get(pitch, 0.0):
                continue
            end = start + float(rng.uniform(0.01, 2))
            free_at[pitch] = end + 0.01
            velocity = int(rng.integers(1, 128))
            instrument.notes.append(pretty_midi.Note(velocity, pitch, start, end))
        for t in np.arange(0.5, 20, 2.0):
            instrument.control_changes.append(pretty_midi.ControlChange(64, 127, float(t)))
            instrument.control_changes.append(pretty_midi.ControlChange(64, 0, float(t) + 1.1))
        midi.instruments.append(instrument)
    midi.adjust_times([0, 10, 30], [0, 8, 30])  # a tempo change partway
    path = tmp_path / "fixture.mid"
    midi.write(str(path))
    return path


def test_symusic_and_pretty_midi_give_the_same_events(midi_file):
    fast = encode_midi(midi_file)
    assert len(fast) > 200
    assert fast.tolist() == encode_midi(pretty_midi.PrettyMIDI(str(midi_file))).tolist()


def test_midi_round_trip_through_a_file(midi_file, tmp_path):
    events = encode_midi(midi_file)
    decoded = decode_midi(events)
    path = tmp_path / "out.mid"
    decoded.write(str(path))
    assert encode_midi(path).tolist() == events.tolist()


def test_performance_tokenizer_round_trips_and_saves(tmp_path):
    from seqgen.tokenizer import load_tokenizer
    from seqgen_tasks.music.tokenizer import PerformanceTokenizer

    tokenizer = PerformanceTokenizer(["<continue>"])
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (388, 389, 390)
    assert tokenizer.special_id("<continue>") == 391 and tokenizer.vocab_size == 392
    ids = [375, 60, 305, 188, 389]
    text = tokenizer.decode(ids, skip_special=False)
    assert text == "VELOCITY_20 NOTE_ON_60 TIME_SHIFT_50 NOTE_OFF_60 <s>"
    assert tokenizer.encode(text) == ids and tokenizer.decode(ids) == text[: -len(" <s>")]
    tokenizer.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.vocab_size == 392 and loaded.special_id("<continue>") == 391
