"""Summarization: the WikiText builder, body selection and truncation, the loss mask, ROUGE
equal to rouge-score's with sound intervals, and evaluation of predictions end to end."""

import json
import random
import re

import numpy as np
import pytest
from helpers import TINY_MODEL, flags, shared_file
from rouge_score import rouge_scorer

from seqgen.cli import main
from seqgen.errors import DataError
from seqgen.evaluation import eval_options
from seqgen.tasks import pairwise
from seqgen_tasks.summarization.data import SummarizationData
from seqgen_tasks.summarization.rouge import (
    PARTS,
    ROUGE_TYPES,
    RougeSimilarity,
    bootstrap,
    lead_words,
    paired_difference,
    score_documents,
    split_sentences,
    union_lcs,
)
from seqgen_tasks.summarization.task import SUMMARIZE, SummarizationTask, rank_paragraphs
from seqgen_tasks.summarization.wikisum import build

# WikiText's layout: every line is padded with spaces, blank lines are a single space
WIKITEXT_LINES = [
    "= First Article =",
    "",
    "The first article 's lead says what it is about in enough words to pass the filter .",
    "It has a second lead paragraph too .",
    "",
    "= = History = =",
    "",
    "The history section is the body of the first article .",
    "' Note : G ' ' = Goals ; A = ' ' Assists '",
    "= Pts =",
    "",
    "= = = Later years = = =",
    "",
    "A subsection, also body .",
    "",
    "= Stub Article =",
    "",
    "Only a lead , no sections at all .",
    "",
    "= Short Lead =",
    "",
    "Tiny .",
    "",
    "= = Section = =",
    "",
    "A body that exists .",
    "",
]
WIKITEXT = "\n".join(f" {line} " if line else " " for line in WIKITEXT_LINES) + "\n"


def test_wikisum_builder_splits_lead_and_body_and_counts_drops():
    rows, dropped = build(WIKITEXT, "train", min_lead_words=5, min_body_words=3)
    assert len(rows) == 1
    row = rows[0]
    assert row["title"] == "First Article" and row["id"] == "train-0000"
    assert row["lead"].split("\n") == [
        "The first article 's lead says what it is about in enough words to pass the filter .",
        "It has a second lead paragraph too .",
    ]
    # the table rows that look like headings stay in the body; real headings are removed
    assert row["body"].split("\n") == [
        "The history section is the body of the first article .",
        "' Note : G ' ' = Goals ; A = ' ' Assists '",
        "= Pts =",
        "A subsection, also body .",
    ]
    assert row["lead_words"] == len(row["lead"].split())
    assert dropped == {"no sections (no body)": 1, "lead under 5 words": 1}


def test_wikisum_cli_writes_split_files(tmp_path, capsys):
    source = tmp_path / "wiki.train.tokens"
    source.write_text(WIKITEXT)
    args = [
        "data",
        "wikisum",
        "--input",
        str(source),
        "--out",
        str(tmp_path / "out"),
        "--min_lead_words",
        "5",
        "--min_body_words",
        "3",
    ]
    assert main(args) == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [r["title"] for r in rows] == ["First Article"]
    assert "dropped: 1 lead under 5 words, 1 no sections (no body)" in capsys.readouterr().out


# ---------------------------------------------------------------- sequences


@pytest.fixture
def tokenizer(sp_tokenizer):
    from seqgen.tokenizer import SentencePieceTokenizer

    tok = SentencePieceTokenizer(sp_tokenizer.model_proto)
    tok.add_special_tokens([SUMMARIZE])
    return tok


ARTICLE = {
    "id": "a",
    "title": "The river castle",
    "document": "the king walks\nthe queen sings in the garden\nthe river castle is old\nsilver",
    "summary": "the castle by the river",
}


def test_tfidf_ranks_paragraphs_by_similarity_to_the_title():
    paragraphs = ARTICLE["document"].split("\n")
    assert rank_paragraphs(ARTICLE["title"], paragraphs)[0] == 2
    assert rank_paragraphs("unrelated words", paragraphs) == [0, 1, 2, 3]  # ties: in order


@pytest.mark.parametrize("title_heading", [True, False])
def test_loss_mask_covers_exactly_the_summary_and_eos(tokenizer, title_heading):
    task = SummarizationTask(SummarizationData(title_heading=title_heading), block_size=199)
    example = task.encode(ARTICLE, tokenizer, max_len=200)
    summary = tokenizer.encode(ARTICLE["summary"])
    body = tokenizer.encode(ARTICLE["document"])
    heading = tokenizer.encode("The river castle\n") if title_heading else []
    prompt = [tokenizer.bos_id, *body, tokenizer.special_id(SUMMARIZE), *heading]
    assert example.ids == [*prompt, *summary, tokenizer.eos_id]
    assert example.loss_mask == [0] * len(prompt) + [1] * (len(summary) + 1)
    assert example.truncated == 0
    # generation sees exactly the prompt that training saw
    stored = SummarizationTask.from_options(task.options(), block_size=199)
    assert stored.prompt(ARTICLE, tokenizer) == prompt


def test_generation_prompt_equals_training_prompt_when_the_body_is_cut(tokenizer):
    trained = SummarizationTask(SummarizationData(max_summary_tokens=8), block_size=40)
    task = SummarizationTask.from_options(trained.options(), block_size=40)
    article = {**ARTICLE, "document": ARTICLE["document"] * 5}
    example = trained.encode(article, tokenizer, max_len=41)  # block_size + 1, as fine-tuning
    assert example.truncated > 0 and len(example.ids) == 41
    assert task.prompt(article, tokenizer) == example.ids[: example.loss_mask.index(1)]


def test_heading_is_cut_to_a_quarter_of_the_room_and_counted(tokenizer):
    task = SummarizationTask(SummarizationData(max_summary_tokens=8))
    long_title = {**ARTICLE, "title": "the river castle " * 20}
    heading = tokenizer.encode(long_title["title"] + "\n")
    example = task.encode(long_title, tokenizer, max_len=80)
    start = example.ids.index(tokenizer.special_id(SUMMARIZE)) + 1
    kept = example.loss_mask.index(1) - start
    assert kept == (80 - 9) // 4 and example.ids[start : start + kept] == heading[:kept]
    assert len(example.ids) == 80


def test_checkpoints_without_the_heading_option_keep_their_layout(tokenizer):
    task = SummarizationTask.from_options({"max_summary_tokens": 8}, block_size=100)  # saved
    # before title_heading existed
    assert task.prompt(ARTICLE, tokenizer)[-1] == tokenizer.special_id(SUMMARIZE)


@pytest.mark.parametrize("selection", ["first", "tfidf"])
def test_body_is_cut_to_the_room_the_summary_leaves(tokenizer, selection):
    task = SummarizationTask(
        SummarizationData(body_selection=selection, max_summary_tokens=8, title_heading=False)
    )
    summary = tokenizer.encode(ARTICLE["summary"])
    assert len(summary) > 8
    river = tokenizer.encode("\nthe river castle is old")
    max_len = 3 + 8 + len(river)  # room for exactly one paragraph (with its newline)
    example = task.encode(ARTICLE, tokenizer, max_len)
    assert len(example.ids) == max_len and sum(example.loss_mask) == 9
    body = example.ids[1 : 1 + len(river)]
    paragraphs = ARTICLE["document"].split("\n")
    if selection == "tfidf":
        assert body == river  # the paragraph that matches the title
    else:
        assert body == tokenizer.encode(ARTICLE["document"])[: len(river)]
    all_body = sum(len(tokenizer.encode(("\n" if i else "") + p)) for i, p in enumerate(paragraphs))
    assert example.truncated == all_body - len(river) + len(summary) - 8


def test_tfidf_keeps_the_chosen_paragraphs_in_their_original_order(tokenizer):
    task = SummarizationTask(SummarizationData(body_selection="tfidf"))
    example = {**ARTICLE, "title": "silver river castle garden"}
    room = len(tokenizer.encode("\nthe river castle is old")) + len(tokenizer.encode("\nsilver"))
    body, _ = task.select_body(example, tokenizer, room)
    assert tokenizer.decode(body) == "\nthe river castle is old\nsilver"


# ---------------------------------------------------------------- ROUGE


def test_rouge_equals_rouge_score_and_a_hand_count():
    reference = "The cat sat on the mat. It was happy."
    prediction = "The cat sat. The cats were happy!"
    ours = score_documents([prediction], [reference])[0]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    theirs = scorer.score(
        "The cat sat on the mat.\nIt was happy.", "The cat sat.\nThe cats were happy!"
    )
    for rouge_type, score in theirs.items():
        assert ours[rouge_type]["fmeasure"] == pytest.approx(100 * score.fmeasure)
        assert ours[rouge_type]["precision"] == pytest.approx(100 * score.precision)
    # by hand: stemmed unigrams; the/cat/sat/happy match 5 of 7 predicted and 5 of 9 reference
    assert ours["rouge1"]["precision"] == pytest.approx(100 * 5 / 7)
    assert ours["rouge1"]["recall"] == pytest.approx(100 * 5 / 9)


def test_ignored_placeholders_do_not_match_themselves():
    reference, prediction = "<unk> founded the <unk> in 1901 .", "<unk> <unk> <unk> the city ."
    counted = score_documents([prediction], [reference])[0]["rouge1"]
    assert counted["precision"] == pytest.approx(100 * 3 / 5)  # unk, unk, the (of 5 words)
    ignored = score_documents([prediction], [reference], ignore=["<unk>"])[0]
    plain = score_documents(["the city ."], ["founded the in 1901 ."])[0]
    assert ignored == plain and ignored["rouge1"]["precision"] == pytest.approx(50)


def test_mbr_similarity_is_rouge2_plus_lsum_f1_without_placeholders():
    summary = "The cat sat. The cats were <unk> happy!"
    other = "The cat sat on the mat. It was happy."
    similarity = RougeSimilarity(ignore=["<unk>"])
    scores = score_documents([summary], [other], ["<unk>"])[0]
    expected = (scores["rouge2"]["fmeasure"] + scores["rougeLsum"]["fmeasure"]) / 100
    assert similarity(summary, other) == pytest.approx(expected)
    assert similarity(summary, other) == pytest.approx(expected)  # cached texts, same value
    assert similarity(summary, summary) == pytest.approx(2.0)
    assert RougeSimilarity()("<unk> <unk> x", "<unk> <unk> y") > 0  # counted unless ignored
    assert RougeSimilarity(["<unk>"])("<unk> <unk> x", "<unk> <unk> y") == 0


def _sample_texts(rng: random.Random, count: int) -> list[str]:
    """Summaries as samples of one article look: a small shared vocabulary (so many tokens
    match, repeatedly), sentences of 0 to 25 words, punctuation-only sentences, <unk>."""
    words = [
        "the",
        "cat",
        "sat",
        "on",
        "mat",
        "running",
        "runs",
        "<unk>",
        "1901",
        "a",
        "of",
        "city",
        "cities",
        "was",
        "and",
        "in",
    ]
    texts = []
    for _ in range(count):
        sentences = [
            " ".join(rng.choices(words, k=rng.randint(0, 25))).capitalize() + "."
            for _ in range(rng.randint(0, 6))
        ]
        texts.append(" ".join(sentences + rng.choice([[], ["!!"], ["Yes."]])))
    return texts


def test_rouge_matrix_equals_rouge_score_pair_by_pair():
    # The consensus keeps the first of equal totals, so the group scores must equal
    # rouge-score's exactly, not approximately
    rng = random.Random(0)
    for ignore in ((), ("<unk>",)):
        similarity = RougeSimilarity(ignore)
        for _ in range(6):
            texts = _sample_texts(rng, rng.randint(2, 9)) + ["", "...", "The cat sat."]
            assert similarity.matrix(texts) == pairwise(similarity, texts)
    assert RougeSimilarity().matrix(["only one"]) == [[0.0]]


def test_union_lcs_reads_out_the_lcs_rouge_score_reads():
    rng = random.Random(1)
    for _ in range(40):
        reference = [rng.choices(range(5), k=rng.randint(0, 12)) for _ in range(rng.randint(1, 4))]
        predictions = [
            [rng.choices(range(5), k=rng.randint(0, 12)) for _ in range(rng.randint(0, 4))]
            for _ in range(3)
        ]
        marks = union_lcs(reference, predictions)
        for k, prediction in enumerate(predictions):
            for s, sentence in enumerate(reference):
                expected = set().union(*(rouge_scorer.lcs_ind(sentence, c) for c in prediction))
                assert set(np.flatnonzero(marks[k, s])) == expected


def test_rouge_matrix_on_real_summaries():
    valid = shared_file("wikisum_wt2", "valid.jsonl")
    leads = [json.loads(line)["lead"] for line in valid.read_text().splitlines()[:16]]
    similarity = RougeSimilarity(["<unk>"])
    assert similarity.matrix(leads) == pairwise(similarity, leads)


def test_sentence_splitting_and_lead_words():
    text = 'Dr. Smith arrived at 3.5 pm. He left! "Why?" she asked.\nNew paragraph'
    assert split_sentences(text) == [
        "Dr.",
        "Smith arrived at 3.5 pm.",
        "He left!",
        '"Why?" she asked.',
        "New paragraph",
    ]
    assert lead_words("a b\nc d e\nf", 4) == "a b\nc d"


def test_bootstrap_intervals_contain_the_mean_and_are_deterministic():
    docs = score_documents(
        ["the cat", "a dog ran", "birds sing", "the cat sat"],
        ["the cat sat", "the dog ran", "birds fly high", "a mat"],
    )
    first, second = bootstrap(docs, 500, seed=1), bootstrap(docs, 500, seed=1)
    assert first == second
    for rouge_type in first.values():
        for s in rouge_type.values():
            assert s["low"] <= s["mean"] <= s["high"] and s["low"] <= s["mid"] <= s["high"]
    assert first["rouge1"]["fmeasure"]["low"] < first["rouge1"]["fmeasure"]["high"]


def test_paired_difference_sees_a_small_uniform_gain_that_the_intervals_hide():
    def docs(values):
        return [{t: {p: v for p in PARTS} for t in ROUGE_TYPES} for v in values]

    hardness = [5.0, 40.0, 12.0, 70.0, 25.0, 55.0, 8.0, 33.0]  # documents differ a lot
    worse, better = docs(hardness), docs([v + 2.0 for v in hardness])
    own = [bootstrap(s, 500, seed=1)["rouge2"]["fmeasure"] for s in (better, worse)]
    assert own[0]["low"] < own[1]["high"]  # the systems' own intervals overlap
    diff = paired_difference(better, worse, 500, seed=1)
    for bound in ("low", "mid", "high", "mean"):
        assert diff["rouge2"][bound] == pytest.approx(2.0)  # every resample: the same gain
    mixed = paired_difference(
        docs([v + (3.0 if i % 2 else -1.0) for i, v in enumerate(hardness)]), worse, 500, seed=1
    )
    assert mixed["rougeLsum"]["mean"] == pytest.approx(1.0)
    assert mixed["rougeLsum"]["low"] < 1.0 < mixed["rougeLsum"]["high"]
    assert paired_difference(worse, better)["rouge1"]["mean"] == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="8 documents scored for one system, 7"):
        paired_difference(better, worse[:7])


# ---------------------------------------------------------------- evaluation


@pytest.fixture
def dataset(tmp_path):
    rows = [
        {
            "id": f"d{i}",
            "title": "t",
            "body": f"word{i} body text here\nmore body {i}",
            "lead": f"word{i} body summary",
        }
        for i in range(6)
    ]
    path = tmp_path / "valid.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def evaluate_predictions(tmp_path, data, predictions, *extra):
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    report = tmp_path / "r.json"
    code = main(
        [
            "evaluate",
            "--task",
            "summarization",
            "--predictions",
            str(pred),
            "--data",
            str(data),
            "--report",
            str(report),
            "--bootstrap_samples",
            "200",
            *extra,
        ]
    )
    return code, report


def test_evaluate_a_predictions_file(dataset, tmp_path, capsys):
    data, rows = dataset
    predictions = [{"id": r["id"], "prediction": r["lead"]} for r in reversed(rows)]
    output = tmp_path / "scored.jsonl"
    code, report = evaluate_predictions(tmp_path, data, predictions, "--output", str(output))
    assert code == 0
    result = json.loads(report.read_text())
    assert result["documents"] == 6 and result["baseline_words"] == 3
    assert result["system"]["scores"]["rougeLsum"]["fmeasure"]["mid"] == pytest.approx(100)
    baseline = result["baseline"]["scores"]["rouge1"]["fmeasure"]["mean"]
    assert baseline == pytest.approx(100 * 2 / 3)  # "wordN body text" vs "wordN body summary"
    scored = [json.loads(x) for x in output.read_text().splitlines()]
    assert [s["id"] for s in scored] == [r["id"] for r in rows]  # in the data's order
    assert scored[0]["scores"]["rouge1"]["fmeasure"] == pytest.approx(100)
    assert "| predictions " in capsys.readouterr().out
    code, report = evaluate_predictions(tmp_path, data, predictions, "--ignore", "summary")
    result = json.loads(report.read_text())
    assert result["ignored"] == ["summary"]
    baseline = result["baseline"]["scores"]["rouge1"]["fmeasure"]["mean"]
    assert baseline == pytest.approx(80)  # "wordN body text" vs "wordN body": P 2/3, R 1


def test_compare_two_systems_with_a_paired_difference(dataset, tmp_path, capsys):
    data, rows = dataset
    other = tmp_path / "other.jsonl"
    other.write_text(
        "".join(
            json.dumps({"id": r["id"], "prediction": r["lead"].split()[0]}) + "\n" for r in rows
        )
    )
    predictions = [{"id": r["id"], "prediction": r["lead"]} for r in rows]
    code, report = evaluate_predictions(tmp_path, data, predictions, "--compare", str(other))
    assert code == 0
    result = json.loads(report.read_text())
    assert result["compared"]["predictions"] == str(other)
    assert result["ignored"] == []
    gap = result["compared"]["difference"]["rouge1"]  # 100 vs "wordN": F1 of 1 word in 3 = 50
    assert gap["mean"] == pytest.approx(50) and gap["low"] == pytest.approx(50)
    assert re.search(
        r"\| minus other.jsonl \(paired\) +\| +\+50.00 \[\+50.00, \+50.00\]",
        capsys.readouterr().out,
    )
    other.write_text(json.dumps({"id": "d0", "prediction": "x"}) + "\n")
    code, _ = evaluate_predictions(tmp_path, data, predictions, "--compare", str(other))
    assert code == 2 and "other.jsonl: 1 predictions for 6 documents" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p[:-1], "missing ids: ['d5']"),
        (lambda p: p + [{"id": "zz", "prediction": "x"}], "unknown ids: ['zz']"),
        (lambda p: p + [p[0]], "duplicate id 'd0'"),
        (lambda p: [{"id": "d0", "summary": "x"}] + p[1:], "needs 'id' and a string 'prediction'"),
    ],
)
def test_mismatched_predictions_are_errors(dataset, tmp_path, capsys, change, message):
    data, rows = dataset
    predictions = change([{"id": r["id"], "prediction": r["lead"]} for r in rows])
    code, report = evaluate_predictions(tmp_path, data, predictions)
    assert code == 2 and message in capsys.readouterr().err and not report.exists()


def test_missing_fields_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"body": "x", "lead": "y"}\n{"document": "x", "summary": "y"}\n')
    task = SummarizationTask(SummarizationData(train=str(path)))
    with pytest.raises(DataError, match=r"bad\.jsonl:2: needs fields 'body' and 'lead'"):
        task.load_split("train")


def test_finetune_and_evaluate_a_tiny_model(dataset, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="seqgen")
    data, _ = dataset
    run_dir = tmp_path / "run"
    args = [
        "finetune",
        "--task",
        "summarization",
        "--init_from",
        "none",
        "--data.train",
        str(data),
        "--data.val",
        str(data),
        "--data.body_selection",
        "tfidf",
        "--data.max_summary_tokens",
        "12",
        *flags(
            {
                **TINY_MODEL,
                "tokenizer.vocab_size": 290,
                "train.max_steps": 4,
                "train.batch_size": 3,
                "train.progress_bar": "false",
            }
        ),
        "--out_dir",
        str(run_dir),
    ]
    assert main(args) == 0
    assert "added 1 special token (id 290)" in caplog.text  # <summarize>
    # the defaults of its evaluation: beam search, up to the summary length it trained on
    config = eval_options("summarization", ckpt=str(run_dir), data=str(data))
    assert (config.num_beams, config.no_repeat_ngram_size, config.max_new_tokens) == (4, 3, 12)
    report, output = tmp_path / "r.json", tmp_path / "p.jsonl"
    assert (
        main(
            [
                "evaluate",
                "--ckpt",
                str(run_dir),
                "--data",
                str(data),
                "--num_beams",
                "2",
                "--max_new_tokens",
                "6",
                "--bootstrap_samples",
                "50",
                "--report",
                str(report),
                "--output",
                str(output),
            ]
        )
        == 0
    )
    result = json.loads(report.read_text())
    assert result["documents"] == 6 and result["beams"] == 2
    assert len(output.read_text().splitlines()) == 6
    assert "| model " in capsys.readouterr().out
    mbr = [
        "evaluate",
        "--ckpt",
        str(run_dir),
        "--data",
        str(data),
        "--max_new_tokens",
        "6",
        "--bootstrap_samples",
        "50",
        "--mbr_samples",
        "3",
        "--temperature",
        "1.0",
    ]
    assert main(mbr) == 2  # beam search (the default, 4 beams) draws no samples
    assert "give temperature > 0 and num_beams 1" in capsys.readouterr().err
    assert main([*mbr, "--num_beams", "1", "--batch_size", "0"]) == 2
    assert "batch_size must be >= 1" in capsys.readouterr().err
    assert (
        main(
            [
                *mbr,
                "--num_beams",
                "1",
                "--batch_size",
                "4",
                "--report",
                str(report),
                "--output",
                str(output),
            ]
        )
        == 0
    )
    assert json.loads(report.read_text())["mbr_samples"] == 3
    assert len(output.read_text().splitlines()) == 6
    capsys.readouterr()
    article = tmp_path / "article.txt"
    article.write_text("the king rides to the river\nthe queen sings")
    assert (
        main(
            [
                "generate",
                "--ckpt",
                str(run_dir),
                "--prompt_file",
                str(article),
                "--max_new_tokens",
                "5",
                "--no_repeat_ngram_size",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "the queen sings" not in printed  # the summary alone, not the article
    mbr = [
        "generate",
        "--ckpt",
        str(run_dir),
        "--prompt_file",
        str(article),
        "--max_new_tokens",
        "5",
        "--mbr_samples",
        "3",
        "--seed",
        "0",
    ]
    assert main(mbr) == 2  # the task's defaults: beam search, temperature 0
    assert "give temperature > 0 and num_beams 1" in capsys.readouterr().err
    assert main([*mbr, "--num_beams", "1", "--temperature", "1.0"]) == 0
    consensus = capsys.readouterr().out
    assert consensus.strip() and "the queen sings" not in consensus
    assert main([*mbr, "--num_beams", "1", "--temperature", "1.0"]) == 0
    assert capsys.readouterr().out == consensus  # seeded: the same samples, the same choice
