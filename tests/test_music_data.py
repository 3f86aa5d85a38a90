"""Music corpora: unreadable and empty files are reported, not fatal; encoding is cached;
augmentation stays in its ranges; training windows have the context's shape."""

from collections import Counter

import numpy as np
import pretty_midi
import pytest
import torch

from seqgen.data import IGNORE_INDEX
from seqgen.errors import ConfigError, DataError
from seqgen_tasks.music.data import (
    PerformanceWindows,
    augment,
    event_stream,
    find_midi,
    load_corpus,
)
from seqgen_tasks.music.events import Notes, decode_events, encode_notes


def write_midi(path, pitches, seconds=0.25):
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    for n, pitch in enumerate(pitches):
        piano.notes.append(pretty_midi.Note(80, pitch, n * seconds, (n + 1) * seconds))
    midi.instruments.append(piano)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.write(str(path))


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "midi"
    write_midi(root / "a.mid", [60, 62, 64, 65, 67] * 8)
    write_midi(root / "sub" / "b.MIDI", [48, 50, 52] * 10)
    write_midi(root / "empty.mid", [])
    (root / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    (root / "notes.txt").write_text("not midi")
    return root


def test_unreadable_and_empty_files_are_skipped_with_reasons(corpus, tmp_path):
    performances, report = load_corpus(str(corpus))
    assert report["files"] == 4 and report["encoded"] == 2 and len(performances) == 2
    reasons = {r["file"].rsplit("/", 1)[-1]: r["reason"] for r in report["skipped"]}
    assert reasons["empty.mid"].startswith("no notes")
    assert reasons["broken.mid"].startswith("unreadable MIDI")
    assert report["notes"] == 40 + 30 and report["seconds"] == pytest.approx(10.0 + 7.5)
    again, _ = load_corpus(str(corpus))  # from the cache
    assert [p.pitch.tolist() for p in again] == [p.pitch.tolist() for p in performances]
    encodings = [p for p in (tmp_path / "cache" / "midi").iterdir() if p.suffix != ".lock"]
    assert len(encodings) == 1


def test_a_dataset_of_midi_bytes_is_read_by_its_splits_from_its_one_column_of_bytes(tmp_path):
    import datasets

    from seqgen_tasks.music.task import MusicData, MusicTask

    files = tmp_path / "files"
    splits = {}
    for split, songs in (("train", 6), ("validation", 2), ("test", 1)):
        rows = {"title": [], "midi": []}
        for k in range(songs):
            write_midi(files / f"{split}{k}.mid", [60 + k] * (4 + k))
            rows["title"].append(f"{split} {k}")
            rows["midi"].append((files / f"{split}{k}.mid").read_bytes())
        splits[split] = datasets.Dataset.from_dict(rows)
    folder = tmp_path / "midi_set"
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    performances, report = load_corpus(str(folder), "validation")
    assert [len(p) for p in performances] == [4, 5] and report["pieces"] == ["row 0", "row 1"]
    data = MusicData(train=str(folder), val=str(folder), test=str(folder))
    found = MusicTask(data).performances(("train", "dev", "test"))
    assert [len(found[s]) for s in ("train", "dev", "test")] == [6, 2, 1]
    assert [len(p) for p in found["test"]] == [4]
    with pytest.raises(DataError, match=r"no split 'dev' \(has: train, validation, test\)"):
        load_corpus(str(folder), "dev")
    renamed = splits["train"].rename_column("midi", "performance")
    renamed.save_to_disk(str(tmp_path / "renamed"))
    assert [len(p) for p in load_corpus(str(tmp_path / "renamed"))[0]] == list(range(4, 10))
    two = splits["train"].add_column("cover", [b"png"] * 6)
    two.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(DataError, match=r"one column of bytes.*found 2 among title \(string\)"):
        load_corpus(str(tmp_path / "two"))
    splits["train"].remove_columns("midi").save_to_disk(str(tmp_path / "none"))
    with pytest.raises(DataError, match="found 0 among title"):
        load_corpus(str(tmp_path / "none"))


def test_a_damaged_cache_is_rebuilt_not_raised(corpus, tmp_path):
    performances, _ = load_corpus(str(corpus))
    cached = next(p for p in (tmp_path / "cache" / "midi").iterdir() if p.suffix != ".lock")
    for file in cached.glob("*.arrow"):
        file.write_bytes(b"torn")
    again, _ = load_corpus(str(corpus))
    assert [p.pitch.tolist() for p in again] == [p.pitch.tolist() for p in performances]


def test_ranks_encoding_one_corpus_at_once_take_turns(corpus, tmp_path):
    """Two processes (as two distributed ranks) load an uncached corpus at the same time:
    one encodes while the other waits, and both get it (they shared one fixed .partial
    folder and deleted each other's copy)."""
    import subprocess
    import sys

    code = (
        "import sys; from seqgen_tasks.music.data import load_corpus; "
        "p, r = load_corpus(sys.argv[1], num_proc=1); "
        "print(r['encoded'], sum(len(x) for x in p))"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(corpus)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    # the last line: pyfluidsynth, imported by pretty_midi, prints its library's path when CI is set
    assert [out.splitlines()[-1] for out, _ in outputs] == ["2 70", "2 70"]


def test_finding_files(corpus, tmp_path):
    assert [p.name for p in find_midi(str(corpus))] == [
        "a.mid",
        "broken.mid",
        "empty.mid",
        "b.MIDI",
    ]
    listing = corpus / "list.txt"
    listing.write_text("a.mid\nsub/b.MIDI\n")
    assert [p.name for p in find_midi(str(listing))] == ["a.mid", "b.MIDI"]
    listing.write_text("a.mid\nmissing.mid\n")
    with pytest.raises(DataError, match="1 listed files do not exist"):
        find_midi(str(listing))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no .mid or .midi files"):
        find_midi(str(tmp_path / "nothing"))


def test_augmentation_ranges():
    notes = Notes(
        np.array([0, 2, 60, 126, 127]),
        np.array([0, 10, 20, 30, 40]),
        np.array([10, 20, 30, 40, 41]),
        np.array([80] * 5),
    )
    up = augment(notes, 3, 1.0)
    assert up.pitch.tolist() == [3, 5, 63]  # 126 and 127 leave the range and are dropped
    down = augment(notes, -3, 1.0)
    assert down.pitch.tolist() == [57, 123, 124]
    for stretch in (0.95, 1.05):
        stretched = augment(notes, 0, stretch)
        assert (np.abs(stretched.start - notes.start * stretch) <= 0.5 + 1e-9).all()
        assert (stretched.end > stretched.start).all()  # a note never vanishes
    assert augment(notes, 0, 1.05).start[-1] == 42


def test_windows_are_augmented_draws_of_the_context_length():
    torch.manual_seed(0)
    notes = Notes(np.arange(40, 80), np.arange(0, 400, 10), np.arange(5, 405, 10), np.full(40, 90))
    windows = PerformanceWindows([notes], block_size=32, bos_id=389, eos_id=390, pad_id=388)
    plain = encode_notes(notes)
    assert len(windows) == len(plain) + 2  # one item per offset
    seen_pitches = set()
    for i in range(0, len(windows), 3):
        item = windows[i]
        assert item["input_ids"].shape == item["targets"].shape == (32,)
        assert torch.equal(item["input_ids"][1:], item["targets"][:-1])
        decoded = decode_events(item["input_ids"].numpy())
        seen_pitches.update(decoded.pitch.tolist())
    assert min(seen_pitches) < 40 or max(seen_pitches) > 79  # transposed at least once
    assert min(seen_pitches) >= 37 and max(seen_pitches) <= 82
    short = PerformanceWindows(
        [notes], block_size=512, bos_id=389, eos_id=390, pad_id=388, augment=False
    )[0]
    n = len(plain) + 1  # bos + events + eos, minus one for the shift
    assert short["input_ids"][0] == 389 and short["targets"][n - 1] == 390
    assert (short["targets"][n:] == IGNORE_INDEX).all() and (short["input_ids"][n:] == 388).all()
    stream = event_stream([notes, notes], 389, 390)
    assert len(stream) == 2 * (len(plain) + 2) and stream[0] == 389 and stream[-1] == 390


def test_release_weight_weighs_the_releases_made_while_three_or_more_notes_sound():
    from seqgen_tasks.music.data import WEIGHTED_FROM_SOUNDING
    from seqgen_tasks.music.events import NOTE_OFF, NOTE_ON, encode_notes
    from seqgen_tasks.music.task import MusicData

    # notes struck every 0.1 s, held 0.25 s or 0.45 s: two to five sound at once
    held = np.where(np.arange(20) % 3 == 0, 45, 25)
    notes = Notes(
        np.arange(40, 60), np.arange(0, 200, 10), np.arange(0, 200, 10) + held, np.full(20, 90)
    )
    stream = [389, *encode_notes(notes).tolist(), 390]
    open_notes, before = set(), []  # the notes sounding before each id, walked by hand
    for event in stream:
        before.append(len(open_notes))
        if NOTE_ON <= event < NOTE_ON + 128:
            open_notes.add(event - NOTE_ON)
        elif NOTE_OFF <= event < NOTE_OFF + 128:
            open_notes.discard(event - NOTE_OFF)
    for block_size in (len(stream), 16):  # the whole performance; a window deep inside it
        ids = dict(block_size=block_size, bos_id=389, eos_id=390, pad_id=388, augment=False)
        windows = PerformanceWindows([notes], **ids)
        last = len(windows) - 1
        plain = windows[last]
        assert "loss_mask" not in plain  # every target counts once: no weights to carry
        item = PerformanceWindows([notes], **ids, release_weight=2.5)[last]
        assert torch.equal(item["targets"], plain["targets"])
        n = int((item["targets"] >= 0).sum())
        offset = next(
            k for k in range(len(stream)) if stream[k : k + n] == item["input_ids"][:n].tolist()
        )
        targets = item["targets"][:n]
        releases = (targets >= NOTE_OFF) & (targets < NOTE_OFF + 128)
        crowded = torch.tensor(before[offset + 1 : offset + 1 + n]) >= WEIGHTED_FROM_SOUNDING
        assert (releases & crowded).sum() > 0 and (releases & ~crowded).sum() > 0
        assert (item["loss_mask"][:n][releases & crowded] == 2.5).all()
        assert (item["loss_mask"][:n][~(releases & crowded)] == 1).all()
    assert offset > 0
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(
            ConfigError, match=f"data.release_weight must be a number > 0, got {bad}"
        ):
            MusicData(release_weight=bad)


def test_held_out_splits_are_by_piece_fixed_and_ten_percent_in_all(tmp_path):
    from seqgen_tasks.music.splits import assign, piece_of, split_of

    root = tmp_path / "corpus"
    assert piece_of(root / "Bach__Fugue__bwv_846" / "LeeN01M.mid", root) == "Bach__Fugue__bwv_846"
    assert piece_of(root / "Chopin" / "Ballade" / "1" / "a.mid", root) == "Chopin/Ballade/1"
    assert piece_of(root / "001.mid", root) == "001"  # a file at the top is its own piece
    assert piece_of(tmp_path / "elsewhere" / "x.mid", root) == "x"  # listed from outside
    songs = [f"{k:03d}" for k in range(1, 5001)]
    shares = Counter(split_of(song) for song in songs)
    assert abs(shares["dev"] / 5000 - 0.05) < 0.01 and abs(shares["test"] / 5000 - 0.05) < 0.01
    # a corpus that brings its test gives dev the whole 10%: the pieces test would have taken
    alone = [split_of(song, ["dev"]) for song in songs]
    assert abs(alone.count("dev") / 5000 - 0.10) < 0.015 and "test" not in alone
    assert all(a == "dev" for a, s in zip(alone, songs, strict=True) if split_of(s) != "train")
    # a piece's split depends on its name alone: more files never move it
    assigned = assign(songs[:909], ["dev", "test"], "pop909")
    assert assign(songs, ["dev", "test"], "more")[:909] == assigned
    assert [split_of(song) for song in songs[:909]] == assigned
    # every performance of a piece goes where its piece goes
    pieces = ["a", "b", "a", "c", "b", "a"] + [f"p{k}" for k in range(40)]
    found = assign(pieces, ["dev", "test"], "x")
    assert found[0] == found[2] == found[5] and found[1] == found[4]
    # only the splits asked for are carved; the rest train
    assert set(assign(songs[:909], ["dev"], "pop909")) == {"train", "dev"}
    # a few pieces: each held split takes one, the one of lowest hash; none left is an error
    assert sorted(assign(["x", "y", "z"], ["dev", "test"], "few")) == ["dev", "test", "train"]
    with pytest.raises(DataError, match="few: 2 piece.*none to train on"):
        assign(["x", "y"], ["dev", "test"], "few")
