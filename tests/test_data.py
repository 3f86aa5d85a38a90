import json
import time

import numpy as np
import pytest
import torch

from seqgen.config import TrainConfig
from seqgen.data import IGNORE_INDEX, RandomWindows, SequentialWindows
from seqgen.errors import DataError
from seqgen.tasks import Splits
from seqgen.training.workflow import RunConfig, build_datamodule
from seqgen_tasks.text.corpus import (
    TextData,
    cached_tokens,
    load_text_splits,
    read_documents,
    split_tail,
    tokenize_documents,
)
from seqgen_tasks.text.task import TextTask


def test_text_jsonl_and_directory_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first document\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text('{"body": "second"}\n\n{"body": "third"}\n')
    (tmp_path / "ignored.bin").write_bytes(b"\xff")
    config = TextData(text_field="body")
    docs, fingerprint = read_documents(str(tmp_path), config, "train")
    assert docs == ["first document\n", "second", "third"]
    (tmp_path / "a.txt").write_text("changed\n")
    assert read_documents(str(tmp_path), config, "train")[1] != fingerprint


def test_non_utf8_reports_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("line one\ncaf\u00e9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: not UTF-8 text \(byte offset 12, line 2"):
        read_documents(str(path), TextData(), "train")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "ok"}\n{"text": \n', r"rows.jsonl:2: invalid JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', r"rows.jsonl:2: no field 'text' \(has: body\)"),
        ('{"text": 5}\n', r"rows.jsonl:1: field 'text' is not a string"),
    ],
)
def test_bad_jsonl_rows_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_documents(str(path), TextData(), "train")


def test_missing_and_empty_corpora(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_text_splits(TextData(source=str(tmp_path / "nope.txt")))
    (tmp_path / "empty.txt").write_text(" \n\n")
    with pytest.raises(DataError, match="empty"):
        load_text_splits(TextData(source=str(tmp_path / "empty.txt")))
    with pytest.raises(DataError, match="set data.source"):
        load_text_splits(TextData())


def test_hub_name_fails_fast_offline():
    started = time.perf_counter()
    with pytest.raises(DataError, match="Hugging Face dataset failed"):
        read_documents("no-such-user/no-such-dataset", TextData(), "train")
    assert time.perf_counter() - started < 20


def test_saved_hf_dataset_directory(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": ["alpha beta", "gamma"]}),
        validation=datasets.Dataset.from_dict({"text": ["delta"]}),
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    config = TextData(source=str(tmp_path / "ds"), val_split="validation")
    train, val, _ = load_text_splits(config)
    assert train == ["alpha beta", "gamma"] and val == ["delta"]
    with pytest.raises(DataError, match="no column 'body'"):
        read_documents(str(tmp_path / "ds"), TextData(text_field="body"), "train")


def test_split_tail_cuts_at_a_line_and_keeps_everything():
    docs = ["a\nbb\nccc\n", "dddd\neeeee\n"]
    train, val = split_tail(docs, 0.3)
    assert "".join(train) + "".join(val) == "".join(docs)
    assert val[0] == "eeeee\n" or val[0].startswith("dddd")
    assert all(v.startswith(("e", "d")) for v in val)
    with pytest.raises(DataError, match="val_fraction"):
        split_tail(docs, 1.5)


def test_split_tail_without_newlines_cuts_inside_the_line():
    train, val = split_tail(["x" * 100], 0.1)
    assert train == ["x" * 90] and val == ["x" * 10]


def test_tokenize_packs_documents_with_eos(sp_tokenizer):
    ids = tokenize_documents(["the king", "", "queen"], sp_tokenizer)
    expected = [*sp_tokenizer.encode("the king"), 2, *sp_tokenizer.encode("queen"), 2]
    assert ids.tolist() == expected and ids.dtype == np.uint16


def test_long_documents_are_chunked_without_changing_ids(sp_tokenizer, monkeypatch, corpus_text):
    whole = tokenize_documents([corpus_text], sp_tokenizer)
    monkeypatch.setattr("seqgen_tasks.text.corpus.CHUNK_CHARS", 1000)
    assert np.array_equal(tokenize_documents([corpus_text], sp_tokenizer), whole)


def test_cache_is_reused_and_damaged_entries_rebuilt(sp_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQGEN_CACHE", str(tmp_path / "elsewhere"))
    first = cached_tokens(["the king"], sp_tokenizer, "k1")
    cached = tmp_path / "elsewhere" / "data"
    assert [p.name for p in cached.iterdir()] == ["k1.npy"]
    # a cache hit returns the stored ids even if the documents passed differ
    assert cached_tokens(["other"], sp_tokenizer, "k1").tolist() == first.tolist()
    (cached / "k1.npy").write_bytes(b"garbage")
    rebuilt = cached_tokens(["queen"], sp_tokenizer, "k1")
    assert rebuilt.tolist() == [*sp_tokenizer.encode("queen"), 2]
    assert not list(cached.glob("*.tmp"))


def test_windows_shift_targets_and_cover_validation_once():
    ids = np.arange(23, dtype=np.uint16)
    train = RandomWindows(ids, block_size=8)
    item = train[5]
    assert item["input_ids"].tolist() == list(range(5, 13))
    assert item["targets"].tolist() == list(range(6, 14))
    assert len(train) == 15
    val = SequentialWindows(ids, block_size=8, pad_id=3)
    targets = torch.cat([val[i]["targets"] for i in range(len(val))])
    scored = targets[targets != IGNORE_INDEX]
    assert scored.tolist() == list(range(1, 23))  # every token but the first, exactly once
    last = val[len(val) - 1]
    assert last["input_ids"][-1].item() == 3


def test_text_task_rejects_corpus_smaller_than_a_block(sp_tokenizer, tmp_path):
    task = TextTask(TextData(), block_size=16)
    with pytest.raises(DataError, match="fewer than one block"):
        task.training_data(Splits(["the king"], ["the queen"]), sp_tokenizer)
    data = task.training_data(
        Splits(["the king rides to the castle. " * 20], ["the queen"]), sp_tokenizer
    )
    module = build_datamodule(data, RunConfig(train=TrainConfig(batch_size=2)), sp_tokenizer.pad_id)
    batch = next(iter(module.train_dataloader()))
    assert batch["input_ids"].shape == (2, 16)
    assert torch.equal(batch["targets"][:, :-1], batch["input_ids"][:, 1:])
    assert module.train_dataloader().num_workers == 0
    workers = RunConfig(train=TrainConfig(batch_size=2, num_workers=2))
    loader = build_datamodule(data, workers, sp_tokenizer.pad_id).train_dataloader()
    assert loader.num_workers == 2 and next(iter(loader))["input_ids"].shape == (2, 16)


def test_jsonl_round_trip_through_splits(tmp_path):
    rows = [{"text": f"document number {i}\nwith two lines"} for i in range(20)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    train, val, _ = load_text_splits(TextData(source=str(tmp_path / "c.jsonl"), val_fraction=0.25))
    assert "".join(train + val) == "".join(r["text"] for r in rows)
    assert 0.2 < sum(map(len, val)) / sum(map(len, train + val)) <= 0.3


# ---------------------------------------------------------------- writing whole or not at all


def test_atomic_directory_and_file_keep_the_old_version_when_writing_fails(tmp_path):
    from seqgen.files import atomic_directory, atomic_file

    target = tmp_path / "ckpt"
    with atomic_directory(target) as partial:
        (partial / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_directory(target) as partial:
        (partial / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "first"
    with atomic_directory(target) as partial:
        (partial / "b.txt").write_text("second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .partial, no .old
    assert [p.name for p in target.iterdir()] == ["b.txt"]

    report = tmp_path / "r" / "report.json"
    with atomic_file(report) as partial:
        partial.write_text("{}")
    with pytest.raises(RuntimeError), atomic_file(report) as partial:
        partial.write_text("{half")
        raise RuntimeError("killed")
    assert report.read_text() == "{}" and [p.name for p in report.parent.iterdir()] == [
        "report.json"
    ]


def read_source(task: str, source: str):
    """The task's own reader of a training source."""
    from seqgen_tasks.music.data import load_corpus
    from seqgen_tasks.summarization.data import SummarizationData, read_examples
    from seqgen_tasks.text.corpus import TextData, read_documents
    from seqgen_tasks.translation.data import TranslationData, read_pairs

    readers = {
        "text": lambda: read_documents(source, TextData(), "train"),
        "translation": lambda: read_pairs(source, TranslationData(), "train"),
        "summarization": lambda: read_examples(source, SummarizationData(), "train"),
        "music": lambda: load_corpus(source),
    }
    return readers[task]()


@pytest.mark.parametrize("task", ["text", "translation", "summarization", "music"])
@pytest.mark.parametrize(
    "name", ["./missing", "{tmp}/missing", "missing{suffix}", "a/b/missing", "{here}/missing"]
)
def test_a_missing_local_path_is_an_error_not_a_hub_lookup(task, name, tmp_path, monkeypatch):
    import seqgen.data
    from seqgen.data import missing_local_path

    def hub(*args):
        raise AssertionError("looked the name up on the hub")

    monkeypatch.setattr(seqgen.data, "load_hf_dataset", hub)
    for module in ("text.corpus", "translation.data", "summarization.data"):
        monkeypatch.setattr(f"seqgen_tasks.{module}.load_hf_dataset", hub)
    suffix = ".mid" if task == "music" else ".jsonl"
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)  # `data/missing`: a folder here holds it, not the hub
    source = name.format(tmp=tmp_path, suffix=suffix, here="data")
    assert missing_local_path(source, {suffix})
    with pytest.raises(DataError, match="no such file"):
        read_source(task, source)
    assert not missing_local_path("user/dataset") and not missing_local_path(str(tmp_path))
    assert not missing_local_path("wikitext")
