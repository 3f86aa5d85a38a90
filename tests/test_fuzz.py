"""Fuzzing the readers of user input: whatever the bytes, each gives a result or a
SeqgenError naming the file, never another exception (300 examples each)."""

import io
import json
import tempfile
from pathlib import Path

import pretty_midi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqgen.cli import parse_run
from seqgen.data import read_jsonl
from seqgen.errors import SeqgenError
from seqgen_tasks.music.midi import read_midi
from seqgen_tasks.summarization.data import SummarizationData, read_examples
from seqgen_tasks.translation.data import TranslationData, read_pairs

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def a_midi_file() -> bytes:
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    piano.notes = [pretty_midi.Note(80, 60 + i % 12, i * 0.25, i * 0.25 + 0.2) for i in range(16)]
    midi.instruments.append(piano)
    out = io.BytesIO()
    midi.write(out)
    return out.getvalue()


VALID_MIDI = a_midi_file()
# damaged MIDI: a real file with bytes changed, cut short, or grown
midi_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda cut: VALID_MIDI[:cut], st.integers(0, len(VALID_MIDI))),
    st.builds(
        lambda at, value: VALID_MIDI[:at] + bytes([value]) + VALID_MIDI[at + 1 :],
        st.integers(0, len(VALID_MIDI) - 1),
        st.integers(0, 255),
    ),
    st.builds(lambda extra: VALID_MIDI + extra, st.binary(max_size=50)),
)
# text that is sometimes JSON, sometimes not
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
lines = st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=40)), max_size=8)


def written(data: bytes | str, suffix: str) -> Path:
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as handle:
        handle.write(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return Path(handle.name)


def result_or_seqgen_error(read, path: Path):
    try:
        return read(path)
    except SeqgenError as err:
        assert str(path) in str(err) or path.name in str(err), err
    finally:
        path.unlink()


@FUZZ
@given(midi_bytes)
def test_midi_reader(data):
    midi = result_or_seqgen_error(read_midi, written(data, ".mid"))
    assert midi is None or isinstance(midi, pretty_midi.PrettyMIDI)


@FUZZ
@given(lines)
def test_jsonl_reader(rows):
    text = "\n".join(rows)
    result_or_seqgen_error(lambda p: list(read_jsonl(p)), written(text, ".jsonl"))
    result_or_seqgen_error(
        lambda p: read_examples(str(p), SummarizationData(), "train"), written(text, ".jsonl")
    )


@FUZZ
@given(st.lists(st.text(max_size=30), max_size=8), st.binary(max_size=20))
def test_tsv_reader(rows, junk):
    text = "\n".join(rows)
    pairs = result_or_seqgen_error(
        lambda p: read_pairs(str(p), TranslationData(), "train"), written(text, ".tsv")
    )
    if pairs is not None:
        assert all(pair["source"] and pair["target"] for pair in pairs[0])
    result_or_seqgen_error(
        lambda p: read_pairs(str(p), TranslationData(), "train"), written(junk, ".tsv")
    )


yaml_configs = st.one_of(
    st.text(max_size=60),
    st.dictionaries(
        st.sampled_from(
            [
                "task",
                "model",
                "train",
                "data",
                "out_dir",
                "seed",
                "lm_weight",
                "init_from",
                "tokenizer",
                "unknown",
            ]
        ),
        json_values,
        max_size=4,
    ).map(json.dumps),  # JSON is YAML
)


@pytest.mark.slow
@FUZZ
@given(yaml_configs)
def test_config_loader(text):
    path = written(text, ".yaml")
    try:
        parse_run("pretrain", ["--config", str(path)])
    except SeqgenError:
        pass
    finally:
        path.unlink()


META = {
    "format_version": 1,
    "task": "text",
    "step": 3,
    "model": {"vocab_size": 64, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
}
model_keys = st.sampled_from([*META["model"], "dropout", "bias", "pos_embedding", "other"])


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from([*META, "task_options", "train_tokens", "init_from"]),
        json_values,
        max_size=3,
    ),
    st.dictionaries(model_keys, json_values, max_size=3),
)
def test_checkpoint_config_reader(top, model):
    from seqgen.checkpoint import read_meta

    meta = {**META, **top}
    if isinstance(meta.get("model"), dict):
        meta["model"] = {**meta["model"], **model}
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(meta))
        try:
            read_meta(Path(folder))
        except SeqgenError as err:
            assert "config.json" in str(err)
