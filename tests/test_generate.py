import pytest
import torch

from seqgen.config import ModelConfig
from seqgen.generate import filter_logits, generate
from seqgen.model import GPT


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=40, block_size=12, n_layer=2, n_head=2, n_embd=32)).eval()


def test_greedy_is_argmax_of_full_recompute(model):
    prompt = [1, 5, 7]
    out = generate(model, prompt, 20, temperature=0)  # runs past block_size: sliding window
    ids = list(prompt)
    for token in out:
        with torch.no_grad():
            expected = model(torch.tensor([ids[-12:]]))[0, -1].argmax().item()
        assert token == expected
        ids.append(token)
    assert len(out) == 20


def test_seeded_sampling_repeats(model):
    a = generate(model, [1], 15, temperature=1.0, seed=3)
    b = generate(model, [1], 15, temperature=1.0, seed=3)
    c = generate(model, [1], 15, temperature=1.0, seed=4)
    assert a == b and a != c


def test_top_k_and_top_p_exclude_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 2, None)[0, 2:]).all()
    assert not torch.isinf(filter_logits(logits, 2, None)[0, :2]).any()
    probs = torch.softmax(logits, -1)[0]  # 0.64, 0.24, 0.09, ...
    kept = ~torch.isinf(filter_logits(logits, None, 0.8)[0])
    assert kept.tolist() == [True, True, False, False, False]
    assert probs[:2].sum() >= 0.8
    kept = ~torch.isinf(filter_logits(logits, None, 0.1)[0])
    assert kept.tolist() == [True, False, False, False, False]


def test_sampled_tokens_respect_top_k(model):
    prompt = [3, 4]
    with torch.no_grad():
        allowed = set(model(torch.tensor([prompt]))[0, -1].topk(3).indices.tolist())
    for seed in range(20):
        assert generate(model, prompt, 1, top_k=3, seed=seed)[0] in allowed


def test_eos_stops_and_streaming_callback(model):
    first = generate(model, [1], 1, temperature=0)[0]
    assert generate(model, [1], 10, temperature=0, eos_id=first) == []
    seen = []
    out = generate(model, [1], 5, temperature=0, on_token=seen.append)
    assert seen == out


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
    ],
)
def test_invalid_settings_raise(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, [1], 3, **kwargs)


def test_empty_prompt_raises(model):
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, [], 3)
