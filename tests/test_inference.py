"""The high-level API: seqgen.load(ckpt).generate / .stream through the checkpoint's task."""

import pytest
import torch

import seqgen
from seqgen.config import ModelConfig
from seqgen.cpu import InferenceLinear
from seqgen.model import GPT


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, sp_tokenizer):
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(
            vocab_size=sp_tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32
        )
    )
    with torch.no_grad():  # larger weights than a fresh init: more varied text
        model.transformer.wte.weight.normal_(0.0, 0.3)
    return seqgen.save_model(tmp_path_factory.mktemp("ckpt") / "final", model, sp_tokenizer, "text")


def test_generate_decodes_text_and_repeats_with_a_seed(ckpt):
    generator = seqgen.load(ckpt)
    text = generator.generate("the king", max_new_tokens=20, seed=1)
    assert isinstance(text, str) and text
    assert generator.generate("the king", max_new_tokens=20, seed=1) == text
    samples = generator.generate("the king", max_new_tokens=20, seed=1, num_samples=3)
    assert len(samples) == 3 and all(isinstance(s, str) for s in samples)
    assert len(set(samples)) > 1


def test_stop_strings_cut_the_output(ckpt):
    generator = seqgen.load(ckpt)
    sampling = dict(max_new_tokens=40, min_new_tokens=40, seed=2, temperature=1.5)
    full = generator.generate("", **sampling)
    assert len(full) > 10
    stop = full[6:8]
    cut = generator.generate("", **sampling, stop=[stop])
    assert cut == full[: full.find(stop)] and stop not in cut
    pieces = list(generator.stream("", **sampling, stop=[stop]))
    assert "".join(pieces) == cut
    with pytest.raises(ValueError, match="stop strings"):
        generator.generate("", stop=[""])


def test_stream_pieces_join_to_generate(ckpt):
    generator = seqgen.load(ckpt)
    expected = generator.generate("queen", max_new_tokens=30, seed=3)
    pieces = list(generator.stream("queen", max_new_tokens=30, seed=3))
    assert "".join(pieces) == expected and len(pieces) > 1
    beams = generator.generate("queen", max_new_tokens=10, num_beams=3)
    assert "".join(generator.stream("queen", max_new_tokens=10, num_beams=3)) == beams


def test_precision_and_packing(ckpt):
    packed = seqgen.load(ckpt)
    plain = seqgen.load(ckpt, pack=False)
    assert isinstance(plain.model.lm_head, torch.nn.Linear)
    assert plain.linear_kernels is None
    if packed.linear_kernels:
        assert isinstance(packed.model.lm_head, InferenceLinear)
    greedy = dict(max_new_tokens=15, temperature=0)
    assert packed.generate("the", **greedy) == plain.generate("the", **greedy)
    bf16 = seqgen.load(ckpt, precision="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert isinstance(bf16.generate("the", **greedy), str)
    with pytest.raises(ValueError, match="precision"):
        seqgen.load(ckpt, precision="fp8")
    with pytest.raises(seqgen.CheckpointError, match="not 'music'"):
        seqgen.load(ckpt, task="music")


def test_consensus_picks_the_candidate_closest_to_the_others_first_on_ties():
    from seqgen.inference import consensus

    def overlap(text, other):
        return len(set(text.split()) & set(other.split()))

    # totals: 2+3+0, 2+2+0, 3+2+0, 0 -> candidates 0 and 2 tie, the first wins
    assert consensus(["a b c", "a b d", "a b c e", "z"], overlap) == 0
    assert consensus(["z", "a b c", "a b d", "a b c e"], overlap) == 1
    assert consensus(["only"], overlap) == 0


def test_mbr_keeps_each_prompts_best_sample(ckpt):
    generator = seqgen.load(ckpt)
    prompts, sampling = ["the king", "queen"], dict(max_new_tokens=12, temperature=1.5, seed=4)
    # similarity = the output's own length: the consensus is the group's longest sample
    chosen = generator.generate_mbr(prompts, samples=3, similarity=lambda a, b: len(a), **sampling)
    drawn = generator.generate_many([p for p in prompts for _ in range(3)], **sampling)
    groups = [drawn[:3], drawn[3:]]
    assert len(set(drawn)) > 2  # the samples differ, so the choice matters
    assert chosen == [max(group, key=len) for group in groups]
    done = []
    generator.generate_mbr(
        prompts, samples=3, similarity=lambda a, b: 0.0, on_done=done.append, **sampling
    )
    assert sum(done) == 6
    for bad, message in [
        ({"samples": 1}, "at least 2"),
        ({"temperature": 0.0}, "temperature"),
        ({"num_beams": 2}, "num_beams"),
    ]:
        with pytest.raises(ValueError, match=message):
            generator.generate_mbr(prompts, **{"samples": 3, "similarity": len, **sampling, **bad})


def test_stream_holds_back_a_possible_stop_string_start():
    from seqgen.generation.text import text_pieces

    def pieces(chars, stop):
        return list(text_pieces(iter(map(ord, chars)), lambda ids: "".join(map(chr, ids)), stop))

    assert pieces("xaby", ["ab"]) == ["x"]  # "a" is held, then "ab" stops the text
    assert pieces("xacy", ["ab"]) == ["x", "ac", "y"]  # "a" is released once it cannot match
    # "ab" is held (it may start "abd"); then "bc" completes a stop: the text is "xa"
    assert pieces("xabc", ["abd", "bc"]) == ["x", "a"]


def test_text_pieces_and_the_tail_stop_check_equal_decoding_the_whole_output(sp_tokenizer):
    """Incremental detokenization joins to the whole decode (byte-level pieces of
    multi-byte characters included), and the stop check that decodes a tail finds a stop
    string at the id where a check of the whole text first would."""
    import random

    from seqgen.generation.text import TextPieces, stop_check

    decode = sp_tokenizer.decode
    rng = random.Random(0)
    texts = ["the king speaks", "naïve café — ünïcödé 雪", " leading space", "a\nb\n\nc"]
    for _ in range(40):
        ids = sp_tokenizer.encode(rng.choice(texts)) + [rng.randrange(4, 320) for _ in range(30)]
        pieces = TextPieces(decode)
        whole = decode(ids)
        assert "".join(pieces.add(i) for i in ids) + pieces.finish() == whole
        for stop in ([whole[5:8]], [whole[-3:], "zzz"], [" " + whole.split()[-1]]):
            stop = [s for s in stop if s.strip()]
            if not stop:
                continue
            first = next(
                (n for n in range(1, len(ids) + 1) if any(s in decode(ids[:n]) for s in stop)), None
            )
            check = stop_check(stop, decode)
            found = next((n for n in range(1, len(ids) + 1) if check(ids[:n])), None)
            assert found == first, (stop, whole)
    # bytes that are no character (a small random model makes runs of them) are released as
    # they come, not held to the end
    stray = sp_tokenizer.encode("the") + [sp_tokenizer.sp.piece_to_id("<0xB2>")] * 50
    pieces = TextPieces(decode)
    released = [pieces.add(i) for i in stray]
    assert sum(map(bool, released)) >= 45 and "".join(released) + pieces.finish() == decode(stray)


def test_device_selection_and_its_errors(ckpt, monkeypatch, capsys, tmp_path):
    from seqgen.cli import main
    from seqgen.devices import inference_precision, resolve_device
    from seqgen.errors import ConfigError

    generator = seqgen.load(ckpt, device="auto")  # no GPU here: the CPU, in fp32
    assert generator.device.type == "cpu" and generator.model.lm_head.weight.dtype == torch.float32
    # the embedding: the linear layers may be packed, by a timing that load decides
    bf16 = seqgen.load(ckpt, device="cpu", precision="bf16")
    assert bf16.model.transformer.wte.weight.dtype == torch.bfloat16
    assert inference_precision("auto", torch.device("cpu")) == "32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name, message in [
        ("cuda", "device cuda: this machine has no CUDA device"),
        ("cuda:3", "device cuda:3: this machine has no CUDA device"),
        ("tpu", "device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_device(name)
        with pytest.raises(ConfigError, match=message):
            seqgen.load(ckpt, device=name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="cuda:2: this machine has 2 CUDA devices"):
        resolve_device("cuda:2")
    monkeypatch.undo()
    base = ["--ckpt", str(ckpt), "--max_new_tokens", "4"]
    for command in (
        ["generate", "--prompt", "the"],
        ["attention", "--prompt", "the king", "--out", str(tmp_path / "a.png")],
    ):
        assert main([*command, *base, "--device", "cuda:1"]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: device cuda:1: this machine has no CUDA device")
        assert len(error.splitlines()) == 1  # one line, no traceback
    assert main(["generate", "--prompt", "the", *base, "--device", "cpu", "--seed", "1"]) == 0
