"""The token state (seqgen/state.py) and music's sounding notes: computed whole or step by
step it is the same, training windows carry it from the performance's start, the model
needs it exactly when configured for it, and generation with it is what a full forward
pass over each whole sequence predicts, past the context window too."""

import json

import numpy as np
import pytest
import torch
from helpers import write_song

from seqgen.cli import main
from seqgen.config import ModelConfig
from seqgen.data import SequentialWindows
from seqgen.errors import ConfigError
from seqgen.generation.engine import generate
from seqgen.generation.rows import Rows
from seqgen.inference import load
from seqgen.interop.hf import hf_config
from seqgen.model import GPT
from seqgen_tasks.music.data import PerformanceWindows
from seqgen_tasks.music.events import NOTE_OFF, Notes, decode_events, encode_notes
from seqgen_tasks.music.state import (
    AGE_LIMIT,
    SoundingAges,
    SoundingPitches,
    counts_after,
    sounding_counts,
)
from seqgen_tasks.music.task import MusicData, MusicTask

STATE = SoundingPitches()
STATES = [STATE, SoundingAges()]


def random_events(rng: np.random.Generator, n: int) -> np.ndarray:
    """Onsets and releases of a few pitches (so releases often find nothing open), time
    shifts and velocities."""
    pitches = rng.integers(58, 62, n)
    kind = rng.integers(0, 4, n)
    shifts, velocities = 256 + rng.integers(1, 101, n), 356 + rng.integers(1, 33, n)
    return np.choose(kind, [pitches, NOTE_OFF + pitches, shifts, velocities])


def stepwise(ids: np.ndarray, token_state: SoundingPitches = STATE) -> np.ndarray:
    state, out = torch.zeros(1, token_state.size), []
    for token in ids.tolist():
        state = token_state.advance(state, torch.tensor([token]))
        out.append(state[0].clone())
    return torch.stack(out).numpy()


def test_counts_whole_equal_counts_step_by_step_and_follow_decoding():
    rng = np.random.default_rng(0)
    for n in (1, 5, 300):
        ids = random_events(rng, n)
        whole = sounding_counts(ids)
        assert whole.shape == (n, 128) and whole.min() >= 0
        assert np.array_equal(whole, stepwise(ids))
        # what decoding leaves open at the end: the notes that end at the last step
        decoded = decode_events(ids)
        end = int(decode_events(ids).end.max()) if len(decoded) else 0
        open_at_end = np.bincount(decoded.pitch[decoded.end == end], minlength=128)
        assert (whole[-1] <= open_at_end).all()
    assert sounding_counts(np.zeros(0, np.int64)).shape == (0, 128)


@pytest.mark.parametrize("state", STATES, ids=type)
def test_a_window_starts_from_the_state_of_everything_before_it(state):
    rng = np.random.default_rng(3)
    ids = random_events(rng, 400)
    ids[:50] = rng.integers(30, 90, 50)  # onsets of many pitches, then releases of few
    whole = state.sequence(ids)
    assert np.array_equal(whole[:, :128], sounding_counts(ids))
    for start in (0, 1, 37, 50, 200, 399, 400):
        assert np.array_equal(state.window(ids, start), whole[start:])
        before = whole[start - 1] if start else None  # continued piece by piece
        assert np.array_equal(state.sequence(ids[start:], before), whole[start:])
        counts = whole[start - 1, :128] if start else [0] * 128
        assert np.array_equal(counts_after(ids[:start]), counts)


def test_ages_whole_equal_ages_step_by_step():
    rng = np.random.default_rng(6)
    ages = SoundingAges()
    for n in (1, 5, 300, 2000):  # 2,000 events: notes older than AGE_LIMIT
        ids = np.concatenate([[388], random_events(rng, n), [389]])
        whole = ages.sequence(ids)
        assert whole.shape == (n + 2, ages.size) and whole.dtype == np.float32
        assert np.array_equal(whole, stepwise(ids, ages))
    assert (whole[:, 128:256] == 1).any()  # some reached the limit


def test_ages_count_time_since_the_last_onset_of_a_sounding_pitch():
    shift = 255  # + steps of 10 ms
    ids = np.array(
        [
            60,
            shift + 30,
            shift + 20,
            64,
            60,
            shift + 5,
            NOTE_OFF + 60,
            NOTE_OFF + 60,
            shift + 100,
            64,
            *[shift + 100] * 6,
        ]
    )
    state = SoundingAges().sequence(ids)
    ages = np.rint(state[:, 128:256] * AGE_LIMIT)
    assert ages[:, 60].tolist() == [0, 30, 50, 50, 0, 5, 5, 0, 0, 0, *[0] * 6]
    assert ages[:, 64].tolist() == [0, 0, 0, 0, 0, 5, 5, 5, 105, 0, 100, 200, 300, 400, 500, 500]
    fades = state[:, 256:].reshape(len(ids), 3, 128)
    assert np.allclose(fades[2, :, 60], np.exp(-50 / np.array([5, 20, 80])))
    assert (fades[:4, :, 60] > 0).all() and fades[4, :, 60].tolist() == [1, 1, 1]  # struck again
    assert not fades[7:9, :, 60].any()  # released: silent, no age
    assert not fades[:3, :, 64].any()  # not yet struck


def test_releases_of_silent_pitches_are_ignored_and_overlaps_counted():
    on, off = 60, NOTE_OFF + 60
    ids = np.array([off, on, on, off, off, off, on])
    assert sounding_counts(ids)[:, 60].tolist() == [0, 1, 2, 1, 0, 0, 1]
    advanced = STATE.advance(torch.tensor([[0.0] * 128, [1.0] * 128]), torch.tensor([off, 400]))
    assert advanced[0, 60] == 0 and advanced[1].tolist() == [1.0] * 128


@pytest.mark.parametrize("state", STATES, ids=type)
def test_training_windows_carry_the_state_from_the_performance_start(state):
    notes = Notes(
        np.array([60, 64, 67]),
        np.array([0, 10, 500]),
        np.array([900, 30, 520]),
        np.array([80, 80, 80]),
    )
    performance = encode_notes(notes).astype(np.int64)
    windows = PerformanceWindows([notes], 8, 388, 389, 390, augment=False, state=state)
    full = state.sequence(np.concatenate([[388], performance, [389]]))
    for i in range(len(windows)):
        item = windows[i]
        offset = i * max(1, len(performance) + 2 - 9 + 1) // len(windows)
        assert item["state"].shape == (8, state.size)
        assert np.array_equal(item["state"].numpy(), full[offset : offset + 8])
    assert windows[len(windows) - 1]["state"][0, 60] == 1  # struck before the window


@pytest.mark.parametrize("state", STATES, ids=type)
def test_validation_windows_carry_the_state_from_the_stream_start(state):
    rng = np.random.default_rng(4)
    ids = random_events(rng, 50)
    windows = SequentialWindows(ids, 8, 390, state)
    whole = state.sequence(ids)
    for i in range(len(windows)):
        got = windows[i]["state"].numpy()
        inputs = whole[i * 8 : min(i * 8 + 8, len(ids) - 1)]
        assert np.array_equal(got[: len(inputs)], inputs) and not got[len(inputs) :].any()


class CountedState(SoundingPitches):
    """The sounding notes, keeping the lengths of the pieces computed."""

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def sequence(self, ids: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
        self.lengths.append(len(ids))
        return super().sequence(ids, before)


def test_validation_windows_find_the_state_in_one_pass():
    """Each window's state continues the last one's: a window never recomputes the stream
    before it (which made validation quadratic in the stream's length)."""
    ids = random_events(np.random.default_rng(5), 1000)
    counted = CountedState()
    windows = SequentialWindows(ids, 16, 390, counted)
    items = [windows[i]["state"] for i in range(len(windows))]
    assert max(counted.lengths) <= 16 and sum(counted.lengths) <= 2 * len(ids)
    last = (len(ids) - 1) % 16  # the inputs of the last window
    assert np.array_equal(items[-1][:last].numpy(), sounding_counts(ids)[-last - 1 : -1])
    assert "state" not in SequentialWindows(ids, 8, 390)[0]


def test_the_model_reads_a_state_only_when_configured_for_it():
    config = ModelConfig(vocab_size=391, block_size=16, n_layer=1, n_head=2, n_embd=16)
    plain = GPT(config)
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="no token state"):
        plain(ids, state=torch.zeros(2, 5, 128))
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**config.to_dict(), "state_size": 128}))
    with pytest.raises(ValueError, match=r"a token state \(2, 5, 128\), got none"):
        model(ids)
    with pytest.raises(ValueError, match=r"got \(2, 5, 64\)"):
        model(ids, state=torch.zeros(2, 5, 64))
    state = torch.zeros(2, 5, 128)
    state[1, :, 60] = 1
    logits = model(ids, state=state)
    assert not torch.allclose(logits[0], logits[1])  # the state reaches the output
    with pytest.raises(ValueError, match="does not export to HF"):
        hf_config(model.config)


def state_model(block_size: int = 24, size: int = 128, direct: bool = False) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=391,
        block_size=block_size,
        n_layer=2,
        n_head=2,
        n_embd=32,
        state_size=size,
        state_logits=direct,
    )
    model = GPT(config).eval()
    with torch.no_grad():  # a strong state: predictions hinge on it
        model.transformer.wse.weight.normal_(0.0, 1.0)
        if direct:
            model.wso.weight.normal_(0.0, 1.0)
    return model


def test_state_logits_start_at_zero_and_add_the_state_to_the_scores():
    plain, direct = state_model(), state_model(direct=True)
    direct.load_state_dict({**plain.state_dict(), "wso.weight": direct.wso.weight})
    ids = torch.tensor([[388, 60, 188, 62]])
    state = torch.from_numpy(STATE.sequence(ids[0].numpy())).float()[None]
    fresh = GPT(direct.config)
    assert torch.count_nonzero(fresh.wso.weight) == 0  # starts as the model without it
    missing, unexpected = fresh.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["wso.weight"] and not unexpected
    with torch.no_grad():
        assert torch.equal(fresh(ids, state=state), plain(ids, state=state))
    with torch.no_grad():
        weight = torch.randn_like(direct.wso.weight)
        direct.wso.weight.copy_(weight)
        moved = direct(ids, state=state) - plain(ids, state=state)
        last = direct(ids, state=state, last_only=True) - plain(ids, state=state, last_only=True)
    assert torch.allclose(moved, state @ weight.T, atol=1e-5)  # (1, T, V): the state's scores
    assert torch.allclose(last, moved[:, -1:], atol=1e-5)
    with torch.no_grad():  # counts as the task computes them (int16) read as floats
        assert torch.equal(direct(ids, state=state.to(torch.int16)), direct(ids, state=state))
    with pytest.raises(ValueError, match="needs a token state"):
        GPT(
            ModelConfig(
                vocab_size=391, block_size=8, n_layer=1, n_head=1, n_embd=8, state_logits=True
            )
        )


def next_logits(
    model: GPT, sequence: list[int], state: SoundingPitches, start: int = 0
) -> torch.Tensor:
    """The next-id logits of a full forward pass over sequence[start:], its state from the
    whole sequence."""
    window = sequence[start:]
    states = torch.from_numpy(state.sequence(np.array(sequence))[start:]).float()
    with torch.no_grad():
        return model(torch.tensor([window]), state=states[None])[0, -1]


@pytest.mark.parametrize("direct", [False, True], ids=["embedded", "state_logits"])
@pytest.mark.parametrize("state", STATES, ids=type)
def test_greedy_generation_with_a_state_equals_full_forward_passes_past_the_window(state, direct):
    model = state_model(size=state.size, direct=direct)
    block, keep = 24, 18  # past the context the engine re-prefills the last 3/4 of it
    rng = np.random.default_rng(1)
    prompts = [[388, *random_events(rng, n).tolist()] for n in (3, 11, 30)]  # 31 > block
    prompts.append(prompts[1])  # rows of one prompt read it from a shared prefix
    new = generate(model, prompts, 40, temperature=0.0, state=state)
    for prompt, out in zip(prompts, new, strict=True):
        sequence, start = list(prompt), 0
        for token in out:
            if len(sequence) - start > block:
                start = len(sequence) - keep
            assert token == int(next_logits(model, sequence, state, start).argmax())
            sequence.append(token)
        assert len(out) == 40 and start > 0


@pytest.mark.parametrize("direct", [False, True], ids=["embedded", "state_logits"])
@pytest.mark.parametrize("state", STATES, ids=type)
def test_rows_keep_their_state_when_beams_reorder_and_rows_leave(state, direct):
    model = state_model(block_size=64, size=state.size, direct=direct)
    rng = np.random.default_rng(2)
    sequences = [[388, *random_events(rng, n).tolist()] for n in (6, 9)]
    rows = Rows(model, 20, state=state)
    rows.admit(sequences)
    index = torch.tensor([1, 0, 1])  # rows repeated and reordered, as beams are
    rows.select(index)
    sequences = [list(sequences[i]) for i in index.tolist()]
    tokens = [60, NOTE_OFF + 59, 61]
    for sequence, token in zip(sequences, tokens, strict=True):
        sequence.append(token)
    logits = rows.step(torch.tensor(tokens), sequences)
    for row, sequence in enumerate(sequences):
        assert torch.allclose(logits[row], next_logits(model, sequence, state), atol=1e-4)
    order = rows.drop([0])  # the first row leaves
    sequences = [sequences[i] for i in order.tolist()]
    for sequence in sequences:
        sequence.append(62)
    logits = rows.step(torch.tensor([62, 62]), sequences)
    for row, sequence in enumerate(sequences):
        assert torch.allclose(logits[row], next_logits(model, sequence, state), atol=1e-4)


def test_generation_refuses_a_state_the_model_does_not_read():
    with pytest.raises(ValueError, match="size 128, the settings give one of size 0"):
        generate(state_model(), [388], 2)


def test_music_checkpoints_without_the_option_read_no_state():
    assert MusicTask.from_options({}, 64).token_state() is None  # trained before it existed
    assert MusicTask(MusicData(note_state="pitches")).token_state().size == 128
    assert MusicTask(MusicData(note_state="none")).token_state() is None
    ages = MusicTask(MusicData()).token_state()  # the default
    assert isinstance(ages, SoundingAges) and ages.size == 640
    stored = MusicTask(MusicData()).options()  # a checkpoint reads its own
    assert stored["note_state"] == "ages" and "note_ages" not in stored
    assert MusicTask.from_options(stored, 64).token_state().size == 640
    # checkpoints from when the state was two switches
    for older, size in (
        ({"note_state": True}, 128),
        ({"note_state": True, "note_ages": False}, 128),
        ({"note_state": True, "note_ages": True}, 640),
        ({"note_state": False, "note_ages": False}, 0),
    ):
        task = MusicTask.from_options(older, 64)
        assert (task.token_state().size if task.token_state() else 0) == size
    with pytest.raises(ConfigError, match="task_options.note_state must be one of"):
        MusicTask.from_options({"note_state": "durations"}, 64)


def tiny_music_run(tmp_path) -> tuple[list[str], list[str]]:
    """Arguments of a 2-step music run on three small songs, and of a tiny model."""
    songs = tmp_path / "songs"
    for k in range(3):
        write_song(songs / f"{k}.mid", shift=k, notes=32)
    common = [
        "--task",
        "music",
        "--data.train",
        str(songs),
        "--train.batch_size",
        "2",
        "--train.max_steps",
        "2",
        "--train.progress_bar",
        "false",
    ]
    tiny = [
        "--model.n_layer",
        "1",
        "--model.n_head",
        "1",
        "--model.n_embd",
        "16",
        "--model.block_size",
        "32",
    ]
    return common, tiny


def test_finetuning_names_a_state_the_checkpoint_was_not_trained_with(tmp_path, capsys):
    common, tiny = tiny_music_run(tmp_path)
    report = tmp_path / "report.json"
    code = main(
        [
            "pretrain",
            *common,
            *tiny,
            "--data.note_state",
            "none",
            "--out_dir",
            str(tmp_path / "plain"),
            "--report",
            str(report),
        ]
    )
    assert code == 0 and json.loads(report.read_text())["model"]["state_size"] == 0
    code = main(
        [
            "finetune",
            *common,
            "--init_from",
            str(tmp_path / "plain"),
            "--out_dir",
            str(tmp_path / "ft"),
        ]
    )
    assert code != 0
    err = capsys.readouterr().err
    assert "token state of size 0" in err and "'note_state': 'none'" in err
    # a checkpoint from before the option: the error gives the value it was trained with
    config = tmp_path / "plain" / "final" / "config.json"
    meta = json.loads(config.read_text())
    del meta["task_options"]["note_state"]
    config.write_text(json.dumps(meta))
    code = main(
        [
            "finetune",
            *common,
            "--init_from",
            str(tmp_path / "plain"),
            "--out_dir",
            str(tmp_path / "ft2"),
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "token state of size 0" in err and "'note_state': 'none'" in err


def test_a_music_model_with_state_logits_trains_saves_and_loads(tmp_path, capsys):
    common, tiny = tiny_music_run(tmp_path)
    common = [*common, *tiny, "--model.state_logits", "true"]
    out = tmp_path / "run"
    assert main(["pretrain", *common, "--out_dir", str(out)]) == 0
    loaded = load(str(out / "final"), task="music")
    assert loaded.model.config.state_logits and loaded.model.config.state_size == 640
    assert torch.count_nonzero(loaded.model.wso.weight) > 0  # trained away from zero
    ids = torch.tensor([[388, 60, 188, 62, 300]])
    state = torch.from_numpy(loaded.states(ids[0].tolist())).float()[None]
    with torch.no_grad():
        assert torch.isfinite(loaded.model(ids, state=state)).all()
    code = main(
        ["pretrain", *common, "--data.note_state", "none", "--out_dir", str(tmp_path / "none")]
    )
    err = capsys.readouterr().err
    assert code != 0 and "model.state_logits" in err and "no token state" in err
