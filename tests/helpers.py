"""Helpers shared by the tests (pytest puts this folder on sys.path)."""


def flags(values: dict) -> list[str]:
    """{"model.n_layer": 1} -> ["--model.n_layer", "1"]"""
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


TINY_MODEL = {
    "model.n_layer": 1,
    "model.n_head": 2,
    "model.n_embd": 32,
    "model.block_size": 32,
    "tokenizer.vocab_size": 320,
}
