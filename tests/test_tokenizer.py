import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqgen.errors import CheckpointError, ConfigError, DataError
from seqgen.tokenizer import SentencePieceTokenizer, TokenizerConfig, load_tokenizer

HARD_TEXTS = [
    "",
    "plain ascii",
    "  leading and trailing spaces  ",
    "emoji 😀🎉👩‍👩‍👧 and flags 🇩🇪",
    "CJK 漢字 かな カナ 한국어",
    "control \x00\x01\x07\x1b[31m\x7f chars",
    "tabs\tand\r\nwindows\nnewlines\n\n",
    "literal \u2581 sentencepiece space \u2581\u2581",
    "combining e\u0301 and ligature \ufb01 (no normalisation)",
    "<s></s><pad> special strings stay text",
]


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_round_trip_and_byte_counts(sp_tokenizer, text):
    ids = sp_tokenizer.encode(text)
    assert sp_tokenizer.decode(ids) == text
    lengths = sp_tokenizer.token_byte_lengths()
    assert sum(lengths[i] for i in ids) == len(text.encode())
    assert 0 not in ids  # <unk> is never produced: byte fallback covers everything


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_text(sp_tokenizer, text):
    assert sp_tokenizer.decode(sp_tokenizer.encode(text)) == text


def test_reserved_ids_and_specials(sp_tokenizer):
    tok = SentencePieceTokenizer(sp_tokenizer.model_proto, ["<delim>"])
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    assert tok.vocab_size == 321 and tok.special_id("<delim>") == 320
    # appending never renumbers; adding an existing token is a no-op
    assert tok.add_special_tokens(["<de>", "<delim>"]) == [321, 320]
    assert tok.vocab_size == 322
    assert tok.encode("<delim>") != [320]  # specials are not matched inside text
    ids = [tok.bos_id, *tok.encode("hi"), 320, tok.eos_id]
    assert tok.decode(ids) == "hi"
    assert tok.decode(ids, skip_special=False) == "<s>hi<delim></s>"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([999])
    with pytest.raises(KeyError):
        tok.special_id("<nope>")


def test_save_load(sp_tokenizer, tmp_path):
    tok = SentencePieceTokenizer(sp_tokenizer.model_proto, ["<x>"])
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.vocab_size == tok.vocab_size and loaded.special_id("<x>") == 320
    assert loaded.encode("the king speaks") == tok.encode("the king speaks")


def test_load_errors(tmp_path, sp_tokenizer):
    with pytest.raises(CheckpointError, match="missing"):
        load_tokenizer(tmp_path)
    sp_tokenizer.save(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a valid SentencePiece model"):
        load_tokenizer(tmp_path)
    (tmp_path / "seqgen_tokenizer.json").write_text('{"kind": "klingon"}')
    with pytest.raises(CheckpointError, match="unknown tokenizer kind 'klingon'"):
        load_tokenizer(tmp_path)


def test_seqgen_0_1_file_name_still_loads_and_hf_file_is_named(tmp_path, sp_tokenizer):
    sp_tokenizer.save(tmp_path)
    (tmp_path / "seqgen_tokenizer.json").rename(tmp_path / "tokenizer.json")  # 0.1's name
    assert load_tokenizer(tmp_path).encode("the king") == sp_tokenizer.encode("the king")
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')
    with pytest.raises(CheckpointError, match="Hugging Face tokenizer.*seqgen import --hf"):
        load_tokenizer(tmp_path)


def test_training_errors():
    with pytest.raises(DataError, match="empty corpus"):
        SentencePieceTokenizer.train(["", "  \n"], TokenizerConfig(vocab_size=300))
    many_chars = "".join(chr(0x4E00 + i) for i in range(400))
    with pytest.raises(DataError, match="raise tokenizer.vocab_size to at least"):
        SentencePieceTokenizer.train([many_chars], TokenizerConfig(vocab_size=300))


def test_user_symbols_are_single_pieces_and_round_trip(corpus_text):
    corpus = corpus_text.replace(" the ", " the <unk> ")
    plain = SentencePieceTokenizer.train([corpus], TokenizerConfig(vocab_size=320))
    config = TokenizerConfig(vocab_size=321, user_symbols=["<unk>"])
    tok = SentencePieceTokenizer.train([corpus], config)
    symbol = tok.sp.piece_to_id("<unk>")
    assert symbol == 4 and tok.sp.piece_to_id("<0x00>") == 5  # after the reserved ids
    text = "the <unk> king <unk><unk> and <un k>"
    ids = tok.encode(text)
    assert ids.count(symbol) == 3 and tok.decode(ids) == text
    assert tok.token_byte_lengths()[symbol] == 5
    assert len(ids) < len(plain.encode(text))
    assert 0 not in ids and tok.decode([0]) == ""  # the reserved unknown piece stays unused


@pytest.mark.parametrize(
    ("symbols", "message"),
    [
        (["<s>"], "reserved"),
        (["x", "x"], "duplicates"),
        ([""], "non-empty"),
        (["a\u2581b"], "U\\+2581"),
    ],
)
def test_user_symbol_errors(symbols, message):
    with pytest.raises(ConfigError, match=message):
        TokenizerConfig(vocab_size=400, user_symbols=symbols)
    with pytest.raises(ConfigError, match="at least 262"):
        TokenizerConfig(vocab_size=261, user_symbols=["<unk>"])
