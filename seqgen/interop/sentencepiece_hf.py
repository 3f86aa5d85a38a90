"""A seqgen SentencePiece tokenizer as a Hugging Face `tokenizers.Tokenizer` (same ids, same
pieces): what `seqgen export --format hf` writes beside the model."""

from __future__ import annotations

# SentencePiece's ModelProto piece types and model types
SP_NORMAL, SP_USER_DEFINED = 1, 4
SP_UNIGRAM, SP_BPE, SP_CHAR = 1, 2, 4


def sentencepiece_to_hf(
    model_proto: bytes, space: str, unk: str, builtin: list[str], appended: dict[str, int]
):
    """The HF equivalent of a seqgen SentencePiece tokenizer: same ids, same pieces.
    `space` is the piece that stands for a space, `unk` the unknown piece, `builtin` the
    model's own special pieces, `appended` the special tokens added after its pieces, by id.

    SentencePiece's settings in seqgen (identity normalisation, no dummy prefix, byte
    fallback) map to: spaces written as U+2581, the BPE or unigram model with byte fallback,
    user symbols and special tokens as added tokens. One difference: a literal U+2581 in the
    text reads as a space here, where seqgen spells it out in bytes.
    """
    try:
        from sentencepiece import sentencepiece_model_pb2  # needs protobuf
        from tokenizers import AddedToken, Regex, decoders, models, normalizers
        from tokenizers import Tokenizer as HFTokenizerObject
    except ImportError as err:
        raise ImportError(
            f"a Hugging Face tokenizer needs transformers and protobuf ({err}): "
            "pip install 'seqgen[hf]'"
        ) from None

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    pieces = list(proto.pieces)
    model_type = proto.trainer_spec.model_type
    if model_type == SP_UNIGRAM:
        model = models.Unigram([(p.piece, p.score) for p in pieces], unk_id=0, byte_fallback=True)
    elif model_type in (SP_BPE, SP_CHAR):
        normal = {p.piece: (p.score, i) for i, p in enumerate(pieces) if p.type == SP_NORMAL}
        ranked = sorted(
            (-score, i, piece[:cut], piece[cut:])
            for piece, (score, i) in normal.items()
            for cut in range(1, len(piece))
            if piece[:cut] in normal and piece[cut:] in normal
        )  # SentencePiece merges the pair that makes the highest-scoring piece first
        model = models.BPE(
            vocab={p.piece: i for i, p in enumerate(pieces)},
            merges=[(left, right) for *_, left, right in ranked],
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=True,
        )
    else:
        raise ValueError(f"SentencePiece model type {model_type} has no HF equivalent")
    hf = HFTokenizerObject(model)
    hf.normalizer = normalizers.Replace(Regex(" "), space)
    hf.decoder = decoders.Sequence(
        [decoders.Replace(space, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    user = [p.piece for p in pieces if p.type == SP_USER_DEFINED]
    hf.add_tokens([AddedToken(s, special=False, normalized=False) for s in user])
    hf.add_special_tokens(
        [AddedToken(s, special=True, normalized=False) for s in [*builtin, *appended]]
    )
    for token, token_id in appended.items():  # after the pieces, as in seqgen
        if hf.token_to_id(token) != token_id:
            raise AssertionError(
                f"{token}: id {hf.token_to_id(token)} in the HF tokenizer, {token_id} in seqgen's"
            )
    return hf
