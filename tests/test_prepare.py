"""`seqgen data prepare` and training from token shards: the same bytes for any number of
processes, kill -9 and resume, stale folders refused, bad rows named or counted, and
training on memory-mapped shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_corpus
from helpers import TINY_MODEL, flags

import seqgen_tasks.text.prepare as prep
import seqgen_tasks.text.units as units_module
from seqgen.cli import main
from seqgen.errors import DataError
from seqgen.shards import ShardedTokens, read_index, split_tokens
from seqgen.tokenizer import TokenizerConfig
from seqgen_tasks.text.corpus import TextData, tokenize_documents

SMALL = {"UNIT_BYTES": 4096, "SECTION_BYTES": 512, "ROWS_PER_UNIT": 8}  # many units


@pytest.fixture
def small_units(monkeypatch):
    """Units of 4 KiB: a few hundred KB of text makes dozens of units and shards (workers are
    forked, so they see the same constants)."""
    for name, value in SMALL.items():
        monkeypatch.setattr(units_module, name, value)


@pytest.fixture
def tokenizer_dir(tmp_path, sp_tokenizer):
    path = tmp_path / "tok"
    sp_tokenizer.save(path)
    return path


def write_corpus(folder: Path, files: int = 6, jsonl: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (folder / f"book{i}.txt").write_text(make_corpus(300 + 40 * i, seed=i))
    if jsonl:
        rows = [{"text": make_corpus(3 + i % 5, seed=100 + i), "id": i} for i in range(120)]
        (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def prepare(source, out, tokenizer_dir=None, **options):
    data = {key[5:]: options.pop(key) for key in list(options) if key.startswith("data.")}
    tokenizer = TokenizerConfig(vocab_size=320, path=str(tokenizer_dir) if tokenizer_dir else None)
    config = prep.PrepareConfig(
        data=TextData(source=str(source), **data), tokenizer=tokenizer, out=str(out), **options
    )
    return prep.prepare(config)


def folder_bytes(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_the_same_bytes_for_any_number_of_processes(small_units, tmp_path, tokenizer_dir):
    corpus = write_corpus(tmp_path / "corpus")
    one = prepare(corpus, tmp_path / "one", tokenizer_dir, num_proc=1, shard_tokens=5000)
    two = prepare(corpus, tmp_path / "two", tokenizer_dir, num_proc=2, shard_tokens=5000)
    assert one == two
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "two")
    train = one["splits"]["train"]
    assert len(train["shards"]) > 3 and all(s["tokens"] == 5000 for s in train["shards"][:-1])
    # every document ends with eos: 6 text files and 120 rows, in one split or the other
    documents = train["documents"] + one["splits"]["val"]["documents"]
    assert one["counts"]["documents"] == 126 == documents
    assert 0.03 < one["splits"]["val"]["tokens"] / train["tokens"] < 0.25  # val_fraction 0.1


def test_shards_hold_the_ids_of_the_in_memory_path(
    small_units, tmp_path, tokenizer_dir, sp_tokenizer
):
    corpus = write_corpus(tmp_path / "corpus", files=3, jsonl=False)
    held_out = tmp_path / "held.txt"
    held_out.write_text(make_corpus(50, seed=9))
    prepare(
        corpus,
        tmp_path / "out",
        tokenizer_dir,
        shard_tokens=3000,
        **{"data.val_source": str(held_out)},
    )
    texts = [p.read_text() for p in sorted(corpus.glob("*.txt"))]
    expected = tokenize_documents(texts, sp_tokenizer)
    found = split_tokens(tmp_path / "out", "train")
    assert np.array_equal(found[0 : len(found)], expected)
    assert np.array_equal(
        split_tokens(tmp_path / "out", "val")[0:10_000],
        tokenize_documents([held_out.read_text()], sp_tokenizer),
    )


def test_sharded_tokens_slice_across_shards(tmp_path):
    values = np.arange(1000, dtype=np.uint16)
    files, sizes = [], [300, 300, 400]
    for i, (start, size) in enumerate(zip([0, 300, 600], sizes, strict=True)):
        values[start : start + size].tofile(tmp_path / f"{i}.bin")
        files.append(tmp_path / f"{i}.bin")
    tokens = ShardedTokens(files, sizes, "uint16")
    for start, stop in [(0, 10), (295, 305), (250, 950), (990, 1200), (0, 1000), (500, 500)]:
        assert np.array_equal(tokens[start:stop], values[start:stop])
    import pickle

    assert np.array_equal(pickle.loads(pickle.dumps(tokens))[299:301], values[299:301])
    (tmp_path / "1.bin").write_bytes(b"12")
    with pytest.raises(DataError, match="1.bin: 2 bytes, the index says 600"):
        ShardedTokens(files, sizes, "uint16")


KILLER = """
import os, signal, sys
import seqgen_tasks.text.units as units
from seqgen import shard_writer

for name, value in {small}.items():
    setattr(units, name, value)
kill_after, torn = int(sys.argv[1]), sys.argv[2] == "torn"
write, written = shard_writer._ShardWriter._write_shard, []

def dying(self, split):
    if torn and len(written) == kill_after:  # half a shard on disk, under its final name
        (self.out / split / f"shard-{{len(self.shards[split]):06d}}.bin").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, split)
    written.append(split)
    if len(written) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

shard_writer._ShardWriter._write_shard = dying
from seqgen.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize(("kill_after", "torn"), [(3, False), (7, True)])
def test_a_killed_prepare_goes_on_to_the_same_bytes(
    small_units, tmp_path, tokenizer_dir, kill_after, torn
):
    corpus = write_corpus(tmp_path / "corpus")
    prepare(corpus, tmp_path / "whole", tokenizer_dir, num_proc=2, shard_tokens=4000)
    argv = [
        "data",
        "prepare",
        "--data.source",
        str(corpus),
        "--tokenizer.path",
        str(tokenizer_dir),
        "--out",
        str(tmp_path / "killed"),
        "--shard_tokens",
        "4000",
        "--num_proc",
        "2",
    ]
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(small=SMALL))
    child = subprocess.run(
        [sys.executable, str(script), str(kill_after), "torn" if torn else "clean", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -9, child.stderr[-2000:]
    killed = tmp_path / "killed"
    assert not (killed / "index.json").exists()
    with pytest.raises(DataError, match="did not finish; run the same"):
        read_index(killed)
    recorded = json.loads((killed / "progress.json").read_text())["shards"]
    kept = {
        s["file"]: os.stat(killed / s["file"]).st_ino for split in recorded.values() for s in split
    }
    assert kept  # some shards were recorded before the kill
    again = subprocess.run(
        [sys.executable, str(script), "-1", "clean", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SEQGEN_LOG": "INFO"},
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "going on from unit" in again.stderr
    assert folder_bytes(killed) == folder_bytes(tmp_path / "whole")
    assert {f: os.stat(killed / f).st_ino for f in kept} == kept  # never written again


def test_a_full_disk_is_one_error_and_loses_nothing(
    small_units, tmp_path, tokenizer_dir, monkeypatch
):
    import errno
    from contextlib import contextmanager

    from seqgen import shard_writer

    corpus = write_corpus(tmp_path / "corpus")
    prepare(corpus, tmp_path / "whole", tokenizer_dir, shard_tokens=4000)
    real, shard_writes = shard_writer.atomic_file, []

    @contextmanager
    def filling_up(path):
        shard_writes.append(path)
        if len(shard_writes) == 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        with real(path) as partial:
            yield partial

    monkeypatch.setattr(shard_writer, "atomic_file", filling_up)
    with pytest.raises(DataError, match="the disk is full .* run the same command again"):
        prepare(corpus, tmp_path / "full", tokenizer_dir, shard_tokens=4000)
    monkeypatch.setattr(shard_writer, "atomic_file", real)
    assert not (tmp_path / "full" / "index.json").exists()
    prepare(corpus, tmp_path / "full", tokenizer_dir, shard_tokens=4000)
    assert folder_bytes(tmp_path / "full") == folder_bytes(tmp_path / "whole")


def test_a_stale_folder_is_refused_and_overwrite_prepares_it_anew(
    tmp_path, tokenizer_dir, sp_tokenizer
):
    from seqgen.tokenizer import SentencePieceTokenizer

    corpus = write_corpus(tmp_path / "corpus", files=2)
    out = tmp_path / "out"
    prepare(corpus, out, tokenizer_dir)
    before = folder_bytes(out)
    assert prepare(corpus, out, tokenizer_dir)["splits"]  # the same again: nothing to do
    other = tmp_path / "other_tok"
    SentencePieceTokenizer.train([make_corpus(seed=5)], TokenizerConfig(vocab_size=330)).save(other)
    changes = [
        ({"tokenizer_dir": other}, "tokenizer"),
        ({"data.text_field": "body"}, "text_field"),
        ({"data.val_fraction": 0.2}, "val_fraction"),
    ]
    for change, named in changes:
        options = {"tokenizer_dir": tokenizer_dir, **change}
        with pytest.raises(DataError, match=f"prepared from other data or settings \\({named}"):
            prepare(corpus, out, **options)
        assert folder_bytes(out) == before  # the refused run touched nothing
    (corpus / "book0.txt").write_text("changed\n" * 100)
    with pytest.raises(DataError, match="sources differ"):
        prepare(corpus, out, tokenizer_dir)
    prepare(corpus, out, tokenizer_dir, overwrite=True)
    assert folder_bytes(out) != before


def test_bad_rows_are_named_or_counted(tmp_path, tokenizer_dir):
    folder = tmp_path / "bad"
    folder.mkdir()
    good = json.dumps({"text": "the king rides to the castle.\n"})
    (folder / "rows.jsonl").write_text(f"{good}\n{{not json\n{good}\n" + '{"body": "x"}\n' * 2)
    with pytest.raises(DataError, match=r"rows.jsonl: the row at byte offset 44: invalid JSON"):
        prepare(folder, tmp_path / "out", tokenizer_dir)
    (folder / "rows.jsonl").write_text("".join(f"{good}\n" for _ in range(40)) + '{"body": 1}\n')
    with pytest.raises(DataError, match=r"byte offset \d+: no field 'text' \(has: body\)"):
        prepare(folder, tmp_path / "out2", tokenizer_dir)
    (folder / "latin1.txt").write_bytes(b"the king\n" * 30 + "caf\xe9\n".encode("latin1"))
    with pytest.raises(DataError, match=r"latin1.txt: not UTF-8 text \(byte offset 273"):
        prepare(folder, tmp_path / "out3", tokenizer_dir)
    index = prepare(
        folder, tmp_path / "out4", tokenizer_dir, skip_errors=True, **{"data.val_fraction": 0.5}
    )
    assert index["counts"]["skipped_rows"] == 1 and index["counts"]["skipped_bytes"] == 275
    assert index["counts"]["documents"] == 40


def test_pretrain_from_a_prepared_folder(tmp_path, tokenizer_dir, capsys):
    corpus = write_corpus(tmp_path / "corpus", files=2)
    out = tmp_path / "prepared"
    assert (
        main(
            [
                "data",
                "prepare",
                "--data.source",
                str(corpus),
                "--tokenizer.path",
                str(tokenizer_dir),
                "--out",
                str(out),
                "--num_proc",
                "1",
            ]
        )
        == 0
    )
    index = read_index(out)
    report = tmp_path / "report.json"
    run = [
        "pretrain",
        "--data.source",
        str(out),
        *flags(TINY_MODEL),
        "--train.max_steps",
        "4",
        "--train.batch_size",
        "4",
        "--train.progress_bar",
        "false",
    ]
    assert main([*run, "--out_dir", str(tmp_path / "run"), "--report", str(report)]) == 0
    values = json.loads(report.read_text())
    assert values["data_stats"]["train_corpus_tokens"] == index["splits"]["train"]["tokens"]
    assert values["val_loss"] > 0
    from seqgen.tokenizer import load_tokenizer

    assert load_tokenizer(tmp_path / "run" / "final").vocab_size == 320  # the folder's
    other = tmp_path / "other"
    from seqgen.tokenizer import SentencePieceTokenizer

    SentencePieceTokenizer.train([make_corpus(seed=3)], TokenizerConfig(vocab_size=330)).save(other)
    capsys.readouterr()
    assert main([*run, "--out_dir", str(tmp_path / "run2"), "--tokenizer.path", str(other)]) == 2
    error = capsys.readouterr().err
    assert "was prepared with tokenizer" in error and "this run's is" in error
    assert (
        main(
            [
                *run,
                "--out_dir",
                str(tmp_path / "run3"),
                "--data.val_source",
                str(corpus / "book0.txt"),
            ]
        )
        == 2
    )
    assert "holds its own validation split" in capsys.readouterr().err


def test_a_tokenizer_trained_for_prepare_reads_a_bounded_sample(small_units, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", files=8, jsonl=False)
    config = TextData(source=str(corpus))
    plan, units, _ = units_module.plan(config)
    lines = sum(text.count("\n") + 1 for text in prep.sample_texts(plan, units, 500))
    total = sum(p.read_text().count("\n") for p in corpus.glob("*.txt"))
    assert 500 <= lines < 500 + 200 and total > 3000  # stops at the bound, units of ~4 KiB
    index = prepare(corpus, tmp_path / "out")  # no tokenizer.path: one is trained and kept
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.model").is_file()
    assert index["splits"]["train"]["tokens"] > 0
    assert prepare(corpus, tmp_path / "out") == index  # the same command again: its tokenizer


def test_the_text_cache_key_holds_the_field(tmp_path, sp_tokenizer):
    from seqgen_tasks.text.task import TextTask

    rows = [{"text": "the king rides.\n" * 20, "body": "the queen sings.\n" * 20}] * 30
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def stream(field):
        task = TextTask(TextData(source=str(path), text_field=field), block_size=16)
        return np.asarray(task.training_data(task.load(), sp_tokenizer).train.ids)

    text, body = stream("text"), stream("body")
    assert not np.array_equal(text, body)
    assert sp_tokenizer.decode(body[:8].tolist()).startswith("the queen")


def test_tokenizer_train_reads_a_bounded_sample_of_a_text_corpus(small_units, tmp_path, caplog):
    import logging

    corpus = write_corpus(tmp_path / "corpus", files=8, jsonl=False)
    with caplog.at_level(logging.INFO, logger="seqgen"):
        assert (
            main(
                [
                    "tokenizer",
                    "train",
                    "--data.source",
                    str(corpus),
                    "--out",
                    str(tmp_path / "tok"),
                    "--tokenizer.vocab_size",
                    "330",
                    "--tokenizer.max_sentences",
                    "400",
                ]
            )
            == 0
        )
    messages = [record.getMessage() for record in caplog.records]
    trained = next(m for m in messages if "trained the tokenizer" in m)
    lines = int(trained.split(" on ")[1].split()[0].replace(",", ""))
    assert 400 <= lines < 600  # of the corpus's 3,000 and more


def test_a_saved_dataset_prepares_row_by_row(small_units, tmp_path, tokenizer_dir, sp_tokenizer):
    import datasets

    rows = [make_corpus(2 + i % 4, seed=i) for i in range(50)]
    datasets.Dataset.from_dict({"text": rows, "n": list(range(50))}).save_to_disk(
        str(tmp_path / "saved")
    )
    one = prepare(
        tmp_path / "saved", tmp_path / "one", tokenizer_dir, num_proc=1, shard_tokens=2000
    )
    two = prepare(
        tmp_path / "saved", tmp_path / "two", tokenizer_dir, num_proc=2, shard_tokens=2000
    )
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "two") and one == two
    assert one["counts"]["documents"] == 50
    train, val = (split_tokens(tmp_path / "one", s) for s in ("train", "val"))
    found = np.concatenate([train[0 : len(train)], val[0 : len(val)]])
    assert sorted(found.tolist()) == sorted(tokenize_documents(rows, sp_tokenizer).tolist())
    with pytest.raises(DataError, match=r"no column 'body' \(has: text, n\); set data.text_field"):
        prepare(
            tmp_path / "saved", tmp_path / "three", tokenizer_dir, **{"data.text_field": "body"}
        )


def dying_encoder(unit):
    if unit.source == 1 and unit.k == 2:
        os._exit(1)  # as the kernel's out-of-memory killer would end it
    return encode_unit(unit)


encode_unit = units_module.encode_unit


def test_a_dead_worker_is_an_error_and_the_rerun_goes_on(
    small_units, tmp_path, tokenizer_dir, monkeypatch
):
    corpus = write_corpus(tmp_path / "corpus", files=2, jsonl=False)
    prepare(corpus, tmp_path / "whole", tokenizer_dir, num_proc=2, shard_tokens=2000)
    monkeypatch.setattr(prep, "encode_unit", dying_encoder)
    with pytest.raises(DataError, match="a process tokenizing the corpus died"):
        prepare(corpus, tmp_path / "out", tokenizer_dir, num_proc=2, shard_tokens=2000)
    monkeypatch.setattr(prep, "encode_unit", encode_unit)
    prepare(corpus, tmp_path / "out", tokenizer_dir, num_proc=2, shard_tokens=2000)
    assert folder_bytes(tmp_path / "out") == folder_bytes(tmp_path / "whole")


def test_a_streamed_dataset_prepares_as_the_whole_one(small_units, tmp_path, tokenizer_dir, capsys):
    """data.streaming reads rows as they arrive (a hub dataset is not downloaded whole); a
    save_to_disk folder streams the same way offline. The shards equal the row-range ones."""
    import datasets

    rows = [make_corpus(2 + i % 4, seed=i) for i in range(50)]
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "saved"))
    whole = prepare(tmp_path / "saved", tmp_path / "whole", tokenizer_dir, shard_tokens=2000)
    streamed = prepare(
        tmp_path / "saved",
        tmp_path / "stream",
        tokenizer_dir,
        num_proc=2,
        shard_tokens=2000,
        **{"data.streaming": True},
    )
    whole_files = {k: v for k, v in folder_bytes(tmp_path / "whole").items() if "index" not in k}
    stream_files = {k: v for k, v in folder_bytes(tmp_path / "stream").items() if "index" not in k}
    assert whole_files == stream_files and whole["splits"] == streamed["splits"]
    assert streamed["identity"]["sources"][0][3] == "stream"
    assert (
        prepare(
            tmp_path / "saved",
            tmp_path / "stream",
            tokenizer_dir,
            shard_tokens=2000,
            **{"data.streaming": True},
        )
        == streamed
    )  # done: the same command again
    assert (
        main(
            [
                "pretrain",
                "--data.source",
                str(tmp_path / "saved"),
                "--data.streaming",
                "true",
                "--out_dir",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    assert "a stream is tokenized into shards first" in capsys.readouterr().err
