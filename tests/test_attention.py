"""`seqgen attention`: the heat maps drawn are the layers and heads asked for, over the
task's tokens, with its segment boundaries."""

from pathlib import Path

import pytest
from matplotlib.image import imread

from seqgen.cli import main
from seqgen.commands.attention_maps import AttentionConfig, draw, sequence
from seqgen.inference import load
from tests.helpers import write_song

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_v1"


def test_one_layer_one_head_and_a_grid(tmp_path, capsys):
    one = tmp_path / "one.png"
    assert (
        main(
            [
                "attention",
                "--ckpt",
                str(FIXTURES / "text"),
                "--prompt",
                "the king",
                "--layer",
                "0",
                "--head",
                "1",
                "--out",
                str(one),
            ]
        )
        == 0
    )
    assert f"wrote {one} (layer 0, head 1)" in capsys.readouterr().out
    config = AttentionConfig(ckpt=str(FIXTURES / "text"), prompt="the king", out=str(one))
    assert draw(config) == [(0, 0), (0, 1)]  # the fixture has 1 layer of 2 heads
    height, width, _ = imread(one).shape
    assert width > 1.5 * height  # two panels side by side
    config.layer, config.head = 0, 1
    assert draw(config) == [(0, 1)]


def test_translation_draws_source_and_target(tmp_path):
    config = AttentionConfig(
        ckpt=str(FIXTURES / "translation"),
        prompt="a man",
        out=str(tmp_path / "t.png"),
        max_new_tokens=5,
    )
    generator = load(config.ckpt, pack=False)
    ids = sequence(config, generator)
    prompt = generator.prompt_ids("a man")
    assert ids[: len(prompt)] == prompt and len(prompt) < len(ids) <= len(prompt) + 5
    starts = generator.task.segment_starts(ids, generator.tokenizer)
    assert starts == [2, len(prompt)]  # the source after <2de>, the target after <delim>
    assert draw(config) == [(0, 0), (0, 1)]
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_music_events_are_named_readably(tmp_path):
    song = tmp_path / "song.mid"
    write_song(song, shift=0)
    generator = load(FIXTURES / "music", pack=False)
    ids = generator.prompt_ids(str(song))
    labels = [generator.task.token_label(t, generator.tokenizer) for t in ids]
    assert labels[0] == "<s>"
    assert any(label.startswith("ON ") for label in labels)
    assert any(label.startswith("SHIFT ") and label.endswith("ms") for label in labels)
    assert generator.task.token_label(60, generator.tokenizer) == "ON C4"
    config = AttentionConfig(
        ckpt=str(FIXTURES / "music"),
        prompt=str(song),
        out=str(tmp_path / "m.png"),
        head=0,
        max_tokens=12,
    )
    assert draw(config) == [(0, 0)]


def test_bad_requests(tmp_path, capsys):
    out = str(tmp_path / "a.png")
    assert main(["attention", "--ckpt", str(FIXTURES / "text"), "--layer", "3", "--out", out]) == 2
    assert "--layer 3: the model has 1 layer (give 0)" in capsys.readouterr().err
    assert main(["attention", "--ckpt", str(FIXTURES / "text"), "--head", "2", "--out", out]) == 2
    assert "--head 2: the model has 2 heads (give 0-1)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_tokens must be >= 2"):
        AttentionConfig(ckpt="x", out=out, max_tokens=1)
    with pytest.raises(ValueError, match="is a directory"):
        AttentionConfig(ckpt="x", out=str(tmp_path))
    assert not Path(out).exists()
