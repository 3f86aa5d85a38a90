"""`seqgen export --format hf` and `seqgen import --hf`, checked through transformers itself:
AutoTokenizer and AutoModelForCausalLM read the export offline and decode greedily exactly as
`seqgen generate` does; an HF GPT-2 folder imports into a checkpoint that seqgen generates from."""

import json
from pathlib import Path

import pytest
import torch

import seqgen
from seqgen import checkpoint
from seqgen.cli import main
from seqgen.config import ModelConfig
from seqgen.model import GPT

transformers = pytest.importorskip("transformers")
FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_v1"
PROMPT = "the king speaks"


def export(ckpt, out, *extra) -> None:
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out), *extra]) == 0


def hf_greedy(folder, prompt: str, new: int) -> str:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, do_sample=False, max_new_tokens=new)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_export_generates_the_same_greedy_text_as_seqgen(text_ckpt, tmp_path, capsys):
    export(text_ckpt, tmp_path / "hf")
    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "seqgen_tokenizer.json",
    } <= set(files)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    tok = seqgen.load_tokenizer(text_ckpt)
    assert (
        config["vocab_size"],
        config["bos_token_id"],
        config["eos_token_id"],
        config["pad_token_id"],
    ) == (tok.vocab_size, 1, 2, 3)
    assert config["seqgen"]["task"] == "text" and config["seqgen"]["step"] == 7
    settings = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert settings["tokenizer_class"] == "PreTrainedTokenizerFast"  # transformers 4 and 5
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    generator = seqgen.load(text_ckpt)
    assert hf_tokenizer(PROMPT)["input_ids"] == generator.prompt_ids(PROMPT)  # eos first
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                "--ckpt",
                str(text_ckpt),
                "--prompt",
                PROMPT,
                "--temperature",
                "0",
                "--max_new_tokens",
                "24",
            ]
        )
        == 0
    )
    ours = capsys.readouterr().out.strip()
    theirs = PROMPT + hf_greedy(tmp_path / "hf", PROMPT, 24)
    assert len(ours) > len(PROMPT) + 10 and ours == theirs


def test_exported_tokenizer_encodes_and_decodes_as_seqgen(text_ckpt, tmp_path):
    export(text_ckpt, tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = seqgen.load_tokenizer(text_ckpt)
    from tests.conftest import make_corpus

    for line in [*make_corpus(60, seed=3).splitlines(), "  two  spaces\tand tab", "ünïcode ✓"]:
        ids = ours.encode(line)
        assert hf(line, add_special_tokens=False)["input_ids"] == ids
        assert hf.decode(ids) == ours.decode(ids) == line


def test_translation_export_builds_the_task_prompt(tmp_path):
    export(FIXTURES / "translation", tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    generator = seqgen.load(FIXTURES / "translation")
    # bos, target-language tag, source, delimiter: what `seqgen generate` builds
    assert hf("a man rides")["input_ids"] == generator.prompt_ids("a man rides")


def test_music_export_names_the_events(tmp_path):
    export(FIXTURES / "music", tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = seqgen.load_tokenizer(FIXTURES / "music")
    names = "VELOCITY_20 NOTE_ON_60 TIME_SHIFT_50 NOTE_OFF_60"
    assert hf(names, add_special_tokens=False)["input_ids"] == ours.encode(names)
    assert hf.decode(ours.encode(names)) == names
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (ours.bos_id, ours.eos_id)


def test_export_then_import_is_the_same_checkpoint(tmp_path):
    for name in ("text", "translation", "music"):
        export(FIXTURES / name, tmp_path / name / "hf")
        assert (
            main(
                [
                    "import",
                    "--hf",
                    str(tmp_path / name / "hf"),
                    "--out",
                    str(tmp_path / name / "back"),
                ]
            )
            == 0
        )
        before, after = checkpoint.load(FIXTURES / name), checkpoint.load(tmp_path / name / "back")
        assert after.task == name and after.tokenizer.kind == before.tokenizer.kind
        assert after.meta.get("task_options") == before.meta.get("task_options")
        assert after.meta["step"] == before.meta["step"]
        # the same model config (an older checkpoint leaves out fields added since, at defaults)
        assert after.model.config == before.model.config
        for key, tensor in before.model.state_dict().items():
            assert torch.equal(tensor, after.model.state_dict()[key]), key


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """An HF GPT-2 folder as transformers writes one: byte-level BPE, one <|endoftext|>."""
    from tokenizers import ByteLevelBPETokenizer

    from tests.conftest import make_corpus

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([make_corpus()], vocab_size=400, special_tokens=["<|endoftext|>"])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(1)
    shape = dict(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    config = transformers.GPT2Config(**shape, bos_token_id=eos, eos_token_id=eos)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(20)
    folder = tmp_path_factory.mktemp("gpt2") / "gpt2-tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_import_of_an_hf_gpt2_folder_generates_as_transformers(gpt2_folder, tmp_path, capsys):
    assert main(["import", "--hf", str(gpt2_folder), "--out", str(tmp_path / "ck")]) == 0
    loaded = checkpoint.load(tmp_path / "ck")
    assert loaded.task == "text" and loaded.tokenizer.kind == "huggingface"
    tok = loaded.tokenizer
    eos = tok.hf.token_to_id("<|endoftext|>")  # GPT-2: one token for all three roles
    assert tok.eos_id == tok.bos_id == tok.pad_id == eos == tok.special_id("</s>")
    text = "the king speaks, ünïcode ✓"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and sum(tok.token_byte_lengths()[i] for i in ids) == len(
        text.encode()
    )
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                "--ckpt",
                str(tmp_path / "ck"),
                "--prompt",
                PROMPT,
                "--temperature",
                "0",
                "--max_new_tokens",
                "20",
            ]
        )
        == 0
    )
    ours = capsys.readouterr().out.strip()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(gpt2_folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(gpt2_folder).eval()
    prompt = [hf_tokenizer.eos_token_id, *hf_tokenizer(PROMPT)["input_ids"]]  # text: eos first
    out = model.generate(
        torch.tensor([prompt]),
        do_sample=False,
        max_new_tokens=20,
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
    )
    assert ours == PROMPT + hf_tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True)
    # a task that adds special tokens (translation's delimiter) extends the vocabulary
    assert tok.add_special_tokens(["<delim>"]) == [tok.vocab_size - 1]
    assert tok.decode([*ids, tok.special_id("<delim>")]) == text


def test_export_and_import_errors(text_ckpt, tmp_path, gpt2_folder):
    export(text_ckpt, tmp_path / "hf")
    assert main(["export", "--ckpt", str(text_ckpt), "--out", str(tmp_path / "hf")]) == 2
    export(text_ckpt, tmp_path / "hf", "--overwrite")  # replaced whole
    relative = checkpoint.save_model(
        tmp_path / "rel",
        GPT(
            ModelConfig(
                vocab_size=320,
                block_size=16,
                n_layer=1,
                n_head=2,
                n_embd=16,
                pos_embedding="relative",
            )
        ),
        seqgen.load_tokenizer(text_ckpt),
        "text",
    )
    with pytest.raises(seqgen.SeqgenError, match="only GPT-2-shaped models.*relative"):
        from seqgen.interop.hf_checkpoint import ExportConfig, export_hf

        export_hf(ExportConfig(ckpt=str(relative), out=str(tmp_path / "rel-hf")))
    assert not (tmp_path / "rel-hf").exists()
    no_tokenizer = tmp_path / "bare"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((gpt2_folder / name).read_bytes())
    from seqgen.interop.hf_checkpoint import ImportConfig, import_hf

    with pytest.raises(seqgen.CheckpointError, match="tokenizer.json: missing"):
        import_hf(ImportConfig(hf=str(no_tokenizer), out=str(tmp_path / "x")))
    (no_tokenizer / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(seqgen.CheckpointError, match="model_type 'llama'; only GPT-2"):
        import_hf(ImportConfig(hf=str(no_tokenizer), out=str(tmp_path / "x")))
    with pytest.raises(seqgen.ConfigError, match="unknown task"):
        import_hf(ImportConfig(hf=str(gpt2_folder), out=str(tmp_path / "x"), task="nope"))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("model_type", ["bpe", "unigram", "char"])
def test_sentencepiece_as_hf_tokenizer_is_the_same_tokenizer(model_type):
    from seqgen.tokenizer import SentencePieceTokenizer, TokenizerConfig
    from tests.conftest import make_corpus

    corpus = make_corpus(400) + "\n<unk> marks @-@ a gap; 12,345 numbers ünïcode\n"
    specials = ["<delim>", "<2de>"]
    config = TokenizerConfig(
        vocab_size=360,
        model_type=model_type,
        user_symbols=["<unk>", "@-@"],
        special_tokens=specials,
    )
    ours = SentencePieceTokenizer.train([corpus], config)
    hf = ours.to_hf()
    lines = [*make_corpus(80, seed=5).splitlines(), "x <unk> y @-@ z 2026", "ℵ 😀  \t end"]
    for line in lines:
        ids = ours.encode(line)
        assert hf.encode(line, add_special_tokens=False).ids == ids, line
        assert hf.decode(ids) == ours.decode(ids) == line
    assert [hf.token_to_id(t) for t in specials] == [ours.special_id(t) for t in specials]
