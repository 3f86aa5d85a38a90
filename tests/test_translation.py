"""Translation: parallel data forms and their errors, the sequence and its loss mask,
special tokens on a pretrained vocabulary, overfitting a few pairs, BLEU/chrF scoring."""

import json
import re

import pytest
import torch
from helpers import make_pairs, write_parallel

from seqgen import checkpoint
from seqgen.errors import DataError
from seqgen.model import GPT
from seqgen.training.examples import pad_batch
from seqgen_tasks.translation.data import TranslationData
from seqgen_tasks.translation.evaluate import score
from seqgen_tasks.translation.task import DELIMITER, TranslationTask, language_tag


def load_pairs(tmp_path, data: TranslationData, split="train"):
    return TranslationTask(data).load_split(split)


# ---------------------------------------------------------------- data


def test_aligned_files_skip_empty_lines_with_a_count(tmp_path):
    (tmp_path / "train.en").write_text("A man.\n\nTwo dogs.\r\nA cat.\n")
    (tmp_path / "train.de").write_text("Ein Mann.\nLeer.\nZwei Hunde.\r\n\n")
    task = TranslationTask(TranslationData(train=str(tmp_path / "train")))
    pairs = task.load_split("train")
    assert [(p["source"], p["target"]) for p in pairs] == [
        ("A man.", "Ein Mann."),
        ("Two dogs.", "Zwei Hunde."),
    ]
    assert task.stats["train_skipped_empty"] == 2 and task.stats["train_pairs"] == 2


def test_misaligned_files_name_both_files_and_counts(tmp_path):
    (tmp_path / "train.en").write_text("a\nb\nc\n")
    (tmp_path / "train.de").write_text("x\ny\n")
    with pytest.raises(DataError) as err:
        load_pairs(tmp_path, TranslationData(train=str(tmp_path / "train")))
    message = str(err.value)
    assert "train.en has 3 lines" in message and "train.de has 2" in message


def test_unicode_line_separators_do_not_break_alignment(tmp_path):
    (tmp_path / "t.en").write_text("one\u2028still one\ntwo\n")
    (tmp_path / "t.de").write_text("eins\nzwei\n")
    pairs = load_pairs(tmp_path, TranslationData(train=str(tmp_path / "t")))
    assert pairs[0]["source"] == "one\u2028still one" and len(pairs) == 2


def test_missing_side_is_named(tmp_path):
    (tmp_path / "train.en").write_text("a\n")
    with pytest.raises(DataError, match=r"train\.de: no such file"):
        load_pairs(tmp_path, TranslationData(train=str(tmp_path / "train")))


def test_jsonl_flat_and_translation_dict_rows(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"translation": {"en": "Hello.", "de": "Hallo."}}, {"en": "Yes.", "de": "Ja."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pairs(tmp_path, TranslationData(train=str(path)))
    assert [(p["source"], p["target"]) for p in pairs] == [("Hello.", "Hallo."), ("Yes.", "Ja.")]
    path.write_text('{"en": "a", "de": "b"}\n{"english": "c", "german": "d"}\n')
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: needs fields 'en' and 'de'.*english"):
        load_pairs(tmp_path, TranslationData(train=str(path)))


def test_tsv_with_header_and_bad_row(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("en\tde\nA man.\tEin Mann.\n")
    pairs = load_pairs(tmp_path, TranslationData(train=str(path)))
    assert [(p["source"], p["target"]) for p in pairs] == [("A man.", "Ein Mann.")]
    path.write_text("A man.\tEin Mann.\nno tab here\n")
    with pytest.raises(DataError, match=r"pairs\.tsv:2: expected 2 tab-separated columns"):
        load_pairs(tmp_path, TranslationData(train=str(path)))


def test_saved_hugging_face_dataset_with_translation_dicts(tmp_path):
    import datasets

    rows = [{"translation": {"de": "Hallo.", "en": "Hello."}}] * 3
    split = datasets.Dataset.from_list(rows)
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(tmp_path / "wmt")
    task = TranslationTask(TranslationData(train=str(tmp_path / "wmt")))
    splits = task.load()
    assert splits.val[0]["target"] == "Hallo." and len(splits.train) == 3


def test_files_need_an_explicit_validation_set(tmp_path):
    prefix = write_parallel(tmp_path, "train", make_pairs(3))
    with pytest.raises(DataError, match="set data.val"):
        load_pairs(tmp_path, TranslationData(train=str(prefix)), split="val")


# ---------------------------------------------------------------- sequences


@pytest.fixture
def tokenizer(sp_tokenizer):
    from seqgen.tokenizer import SentencePieceTokenizer

    tok = SentencePieceTokenizer(sp_tokenizer.model_proto)
    tok.add_special_tokens(TranslationTask().special_tokens())
    return tok


def test_loss_mask_covers_exactly_the_target_and_eos(tokenizer):
    task = TranslationTask()
    pair = {"source": "the king rides", "target": "der koenig reitet", "lang": "de"}
    example = task.encode(pair, tokenizer, max_len=64)
    source, target = tokenizer.encode(pair["source"]), tokenizer.encode(pair["target"])
    delim, tag = tokenizer.special_id(DELIMITER), tokenizer.special_id(language_tag("de"))
    assert example.ids == [tokenizer.bos_id, tag, *source, delim, *target, tokenizer.eos_id]
    assert example.loss_mask == [0] * (len(source) + 3) + [1] * (len(target) + 1)
    assert example.truncated == 0
    batch = pad_batch([example, task.encode({**pair, "source": "the"}, tokenizer, 64)], 3)
    scored = batch["targets"][0][batch["loss_mask"][0].bool()]
    assert scored.tolist() == [*target, tokenizer.eos_id]  # the loss sees target + eos only
    assert (batch["targets"][1][batch["loss_mask"][1] == 0][-3:] == -100).all()  # padding


def test_long_sources_are_cut_first_and_counted(tokenizer):
    task = TranslationTask()
    pair = {"source": "the king " * 40, "target": "the queen rides", "lang": "de"}
    example = task.encode(pair, tokenizer, max_len=40)
    target = tokenizer.encode(pair["target"])
    assert len(target) <= 18  # fits in half of the 36 ids left after bos, tag, delim, eos
    assert len(example.ids) == 40
    assert example.ids[-len(target) - 1 :] == [*target, tokenizer.eos_id]  # target intact
    assert example.truncated == len(tokenizer.encode(pair["source"])) - (40 - 4 - len(target))
    both_long = {"source": "the king " * 40, "target": "der koenig " * 40, "lang": "de"}
    example = task.encode(both_long, tokenizer, max_len=40)
    assert len(example.ids) == 40 and example.ids[-1] == tokenizer.eos_id
    assert sum(example.loss_mask) == 19  # half the room for the target, + eos


def test_special_tokens_extend_a_pretrained_vocabulary(sp_tokenizer, tmp_path):
    from seqgen.config import ModelConfig
    from seqgen.tokenizer import SentencePieceTokenizer

    tok = SentencePieceTokenizer(sp_tokenizer.model_proto)
    text = "the king rides to the castle"
    before_ids, old_size = tok.encode(text), tok.vocab_size
    model = GPT(ModelConfig(vocab_size=old_size, block_size=16, n_layer=1, n_head=2, n_embd=32))
    old_rows = model.transformer.wte.weight.detach().clone()
    new_ids = tok.add_special_tokens(TranslationTask().special_tokens())
    model.resize_vocab(tok.vocab_size)
    assert new_ids == [old_size, old_size + 1] and tok.encode(text) == before_ids
    weight = model.transformer.wte.weight.detach()
    assert torch.equal(weight[:old_size], old_rows)
    assert torch.allclose(weight[old_size:], old_rows.mean(0).expand(2, -1))
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    checkpoint.save_model(tmp_path / "ck", model, tok, task="translation")
    loaded = checkpoint.load(tmp_path / "ck")
    assert loaded.tokenizer.special_id(DELIMITER) == old_size
    assert loaded.tokenizer.encode(text) == before_ids


# ---------------------------------------------------------------- scoring


def test_bleu_and_chrf_of_a_hand_checked_case():
    perfect = score(["Ein Mann fährt Rad ."], ["Ein Mann fährt Rad ."])
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    # one substituted word of eight: precisions 7/8, 6/7, 5/6, 4/5, no brevity penalty,
    # BLEU = (7/8 * 6/7 * 5/6 * 4/5) ** (1/4) = 0.5 ** 0.25
    one_off = score(["a b c d e f g x"], ["a b c d e f g h"])
    assert one_off["bleu"] == pytest.approx(100 * 0.5**0.25, abs=1e-6)
    assert "tok:13a" in one_off["bleu_signature"] and "case:mixed" in one_off["bleu_signature"]
    assert 0 < one_off["chrf"] < 100
    with pytest.raises(DataError, match="2 hypotheses but 1 references"):
        score(["a", "b"], ["a"])


def corpus(n: int = 120) -> tuple[list[str], list[str], list[str]]:
    """References, a system right on 80% of sentences, and one right on 60% of them."""
    references = [f"der mann {i} fährt rad nach hause ." for i in range(n)]
    wrong = [f"ein hund {i} spielt im garten ." for i in range(n)]
    good = [r if i % 5 else w for i, (r, w) in enumerate(zip(references, wrong, strict=True))]
    worse = [r if i % 5 > 1 else w for i, (r, w) in enumerate(zip(references, wrong, strict=True))]
    return references, good, worse


def test_bleu_and_chrf_have_bootstrap_intervals_and_paired_differences():
    references, good, worse = corpus()
    report = score(good, references, bootstrap_samples=300, seed=1, compared=worse)
    for metric in ("bleu", "chrf"):
        low, high = report[f"{metric}_ci"]
        assert low < report[metric] < high and high - low < 20
        difference = report["compare"][metric]
        expected = report[metric] - score(worse, references)[metric]
        assert difference["mid"] == pytest.approx(expected) and difference["mid"] > 0
        assert 0 < difference["low"] < difference["mid"] < difference["high"]
    again = score(good, references, bootstrap_samples=300, seed=1, compared=worse)
    assert again == report  # seeded
    same = score(good, references, bootstrap_samples=50, compared=good)["compare"]["bleu"]
    assert same == {"mid": 0.0, "low": 0.0, "high": 0.0}
    perfect = score(references, references, bootstrap_samples=50)
    assert perfect["bleu_ci"] == pytest.approx([100.0, 100.0])


def test_evaluate_compares_two_systems_from_the_command_line(tmp_path, capsys):
    from seqgen.cli import main

    references, good, worse = corpus()
    for name, lines in (("ref.de", references), ("good.de", good), ("worse.de", worse)):
        (tmp_path / name).write_text("".join(line + "\n" for line in lines))
    report = tmp_path / "r.json"
    base = [
        "evaluate",
        "--task",
        "translation",
        "--hypotheses",
        str(tmp_path / "good.de"),
        "--reference",
        str(tmp_path / "ref.de"),
    ]
    assert main([*base, "--compare", str(tmp_path / "worse.de"), "--report", str(report)]) == 0
    result = json.loads(report.read_text())
    assert set(result["compare"]) == {"bleu", "chrf"} and len(result["bleu_ci"]) == 2
    shown = capsys.readouterr().out
    assert "| good.de " in shown and re.search(r"\| minus worse.de \(paired\) \| +\+", shown)
    (tmp_path / "short.de").write_text("one line\n")
    assert main([*base, "--compare", str(tmp_path / "short.de")]) == 2
    assert "short.de has 1 lines, " in capsys.readouterr().err


def test_mbr_similarity_is_sentence_chrf():
    similarity = TranslationTask().mbr_similarity()
    output = "Ein Mann in einem blauen Hemd putzt ein Fenster ."
    close = "Ein Mann mit blauem Hemd putzt die Fenster ."
    far = "Zwei Hunde spielen im Schnee ."
    assert similarity(output, output) == pytest.approx(100.0)
    assert score([output], [close])["chrf"] == pytest.approx(similarity(output, close))
    assert similarity(output, close) > similarity(output, far) >= 0
