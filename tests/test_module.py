import math

import pytest
import torch

from seqgen.config import ModelConfig, TrainConfig
from seqgen.data import IGNORE_INDEX
from seqgen.training.module import LMModule, masked_nll, sequence_loss


def make_batch():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5))
    targets[1, 3:] = IGNORE_INDEX
    loss_mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    return logits, {"targets": targets, "loss_mask": loss_mask}


def test_loss_averages_over_the_mask_only():
    logits, batch = make_batch()
    nll = masked_nll(logits, batch["targets"])
    assert nll[1, 3:].eq(0).all()
    loss, _ = sequence_loss(logits, batch)
    picked = batch["loss_mask"].bool() & (batch["targets"] != IGNORE_INDEX)
    reference = torch.nn.functional.cross_entropy(logits[picked], batch["targets"][picked])
    assert torch.allclose(loss, reference)
    loss.backward()
    assert logits.grad[0, :2].abs().sum() == 0  # context positions get no gradient
    assert logits.grad[1, 3:].abs().sum() == 0  # neither does padding
    assert logits.grad[0, 2:].abs().sum() > 0


def test_a_loss_mask_of_weights_counts_a_token_of_weight_2_twice():
    logits, batch = make_batch()
    weights = batch["loss_mask"].float()
    weights[0, 2] = 2.0
    weighted, _ = sequence_loss(logits, {**batch, "loss_mask": weights})
    # the same batch with token (0, 2) repeated at a new last position, every weight 1
    repeated = {
        "targets": torch.cat([batch["targets"], batch["targets"][:, 2:3]], dim=1),
        "loss_mask": torch.cat([batch["loss_mask"], torch.tensor([[1], [0]])], dim=1),
    }
    twice, _ = sequence_loss(torch.cat([logits, logits[:, 2:3]], dim=1), repeated)
    assert torch.allclose(weighted, twice)
    assert not torch.allclose(weighted, sequence_loss(logits, batch)[0])


def test_auxiliary_lm_weight_adds_the_whole_sequence_loss():
    logits, batch = make_batch()
    target_only, _ = sequence_loss(logits, batch)
    with_lm, _ = sequence_loss(logits, batch, lm_weight=0.5)
    scored = batch["targets"] != IGNORE_INDEX
    full = torch.nn.functional.cross_entropy(logits[scored], batch["targets"][scored])
    assert torch.allclose(with_lm, target_only + 0.5 * full)


def module(**train) -> LMModule:
    config = ModelConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=16)
    return LMModule(config, TrainConfig(**train), token_bytes=[1] * 16)


def test_weight_decay_only_on_matrices():
    optimizer = module(weight_decay=0.3).configure_optimizers()["optimizer"]
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.3 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"])
    assert all(p.dim() == 1 for p in plain["params"])


def test_warmup_then_cosine_to_min_lr(monkeypatch):
    m = module(warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    monkeypatch.setattr(LMModule, "budget_spent", lambda self, step: (step - 10) / 100)
    factors = [m.lr_factor(s) for s in range(111)]
    assert factors[0] < factors[5] < factors[9] < 1.0
    assert math.isclose(factors[10], 1.0)
    assert math.isclose(factors[60], 0.55, rel_tol=1e-6)
    assert math.isclose(factors[110], 0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))


def test_budget_spent_with_no_trainer_is_zero():
    assert module().budget_spent(50) == 0.0


@pytest.mark.parametrize("field", ["learning_rate", "warmup_steps"])
def test_bad_train_values(field):
    from seqgen.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: -1})


@pytest.mark.parametrize("grad_clip", [0.5, None])
def test_the_gradient_norm_is_clipped_to_grad_clip(grad_clip):
    config = ModelConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8)
    module = LMModule(config, TrainConfig(grad_clip=grad_clip))
    optimizer = torch.optim.AdamW(module.parameters())
    for p in module.parameters():
        p.grad = torch.full_like(p, 3.0)
    before = torch.nn.utils.get_total_norm([p.grad for p in module.parameters()])
    module.on_before_optimizer_step(optimizer)
    after = torch.nn.utils.get_total_norm([p.grad for p in module.parameters()])
    expected = before if grad_clip is None else torch.tensor(grad_clip)
    assert after.item() == pytest.approx(expected.item(), rel=1e-5)


def test_timing_the_precisions_leaves_the_model_as_it_was():
    from seqgen.cpu import training_step_seconds
    from seqgen.model import GPT

    model = GPT(ModelConfig.from_preset("tiny", dropout=0.1)).eval()
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    seconds = training_step_seconds(model, batch_size=4, length=32)
    assert set(seconds) == {"32-true", "bf16-mixed"} and all(s > 0 for s in seconds.values())
    assert torch.equal(torch.rand(3), expected_draw)  # dropout's draws did not move the stream
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())


def test_the_optimizer_is_adamw_with_decay_on_matrices_only():
    module = LMModule(ModelConfig.from_preset("tiny"), TrainConfig(weight_decay=0.3))
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.3 and all(p.dim() == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() == 1 for p in plain["params"])


def test_timings_are_taken_in_turns_after_the_warm_up():
    from seqgen.timing import seconds_in_turns

    order = []
    times = seconds_in_turns(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, times=3, warmup=2
    )
    assert order == ["a", "b"] * 5  # one of each per turn, warm-up turns included
    assert [len(t) for t in times.values()] == [3, 3] and all(s >= 0 for s in times["a"])


def test_fastest_call_takes_the_least_median_and_the_first_on_a_tie(monkeypatch):
    from seqgen import timing

    asked = []

    def in_turns(calls, times, warmup=1):
        asked.append(times)
        return {"slow": [3.0, 1.0, 3.0], "quick": [2.0, 2.0, 9.0], "tied": [2.0, 9.0, 2.0]}

    monkeypatch.setattr(timing, "seconds_in_turns", in_turns)
    assert timing.fastest_call({}) == "quick" and asked == [timing.TIMED_CALLS]
    assert timing.fastest_call({}, times=5) == "quick" and asked[-1] == 5
