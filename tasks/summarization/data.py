"""Document/summary pairs for summarization: a JSONL file, a `save_to_disk` directory or a
Hugging Face dataset, with configurable field names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from seqgen.data import load_hf_dataset, missing_local_path, read_jsonl
from seqgen.errors import DataError


@dataclass
class SummarizationData:
    """Document/summary pairs for summarization."""

    train: str | None = None
    """Training pairs: a .jsonl file, a `save_to_disk` directory or a Hugging Face dataset."""
    val: str | None = None
    """Validation pairs, in the same forms (default for a dataset: its `val_split`)."""
    document_field: str = "body"
    """Field holding the document (body, document, article, ...)."""
    summary_field: str = "lead"
    """Field holding the summary (lead, summary, highlights, ...)."""
    title_field: str | None = "title"
    """Field holding the title (for title_heading and body_selection tfidf); None if none."""
    id_field: str | None = "id"
    """Field holding a document id (kept in evaluation outputs); None to number them."""
    hf_config: str | None = None
    """Hugging Face dataset configuration (e.g. 3.0.0 for cnn_dailymail)."""
    train_split: str = "train"
    """Hugging Face split to train on."""
    val_split: str = "validation"
    """Hugging Face split to validate on when `val` is not set."""
    max_summary_tokens: int = 256
    """Longest summary in a sequence (longer ones are cut and counted); the body gets the
    rest of the context."""
    body_selection: Literal["first", "tfidf"] = "first"
    """How the body is cut to fit: its beginning (first), or its paragraphs ranked by tf-idf
    similarity to the title, kept best first until full, in original order (tfidf)."""
    title_heading: bool = True
    """Put the title (when there is one) after <summarize> as the summary's heading, as it
    heads an article: a lead opens with its subject, and a model pretrained on articles has
    seen titles followed by their leads."""


def read_examples(source: str, data: SummarizationData, hf_split: str) -> list[dict[str, str]]:
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".jsonl":
            raise DataError(f"{path}: summarization data is .jsonl (one JSON object per line)")
        rows = list(read_jsonl(path))
    elif missing_local_path(source, {".jsonl"}):
        raise DataError(f"{path}: no such file")
    else:
        dataset = load_hf_dataset(source, data.hf_config, hf_split)
        rows = [(f"{source} [{hf_split}] row {i}", row) for i, row in enumerate(dataset)]
    return [_example(row, data, where, n) for n, (where, row) in enumerate(rows)]


def _example(row: Any, data: SummarizationData, where: str, n: int) -> dict[str, str]:
    fields = [data.document_field, data.summary_field]
    if not isinstance(row, dict) or any(f not in row for f in fields):
        keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
        raise DataError(
            f"{where}: needs fields {fields[0]!r} and {fields[1]!r} (has: {keys}); "
            "set data.document_field / data.summary_field"
        )
    for f in fields:
        if not isinstance(row[f], str):
            raise DataError(f"{where}: field {f!r} is not a string")
    title = row.get(data.title_field, "") if data.title_field else ""
    ident = row.get(data.id_field) if data.id_field else None
    return {
        "id": str(ident if ident is not None else n),
        "title": str(title or ""),
        "document": row[fields[0]],
        "summary": row[fields[1]],
    }
