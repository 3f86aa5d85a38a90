"""WikiSum on WikiText-2 as `seqgen data get wikisum` makes it: WikiText-2 fetched beside
it, then each split's articles cut into body -> lead pairs by the `seqgen data wikisum`
builder (train, valid and test .jsonl)."""

from __future__ import annotations

from pathlib import Path

from seqgen.download import RemoteDataset
from seqgen_tasks.summarization.wikisum import WikisumConfig, build_splits
from seqgen_tasks.text.sources import WIKITEXT_CITATION, WIKITEXT_HOME, WIKITEXT_LICENCE


def arrange_wikisum(downloads: Path, folder: Path) -> None:
    wikitext = folder.parent / "wikitext2"
    splits = [str(wikitext / f"wiki.{split}.tokens") for split in ("train", "valid", "test")]
    build_splits(WikisumConfig(input=splits, out=str(folder)))


WIKISUM = RemoteDataset(
    name="wikisum",
    description=(
        "WikiSum-style pairs from WikiText-2 (data/wikitext2): an article's body -> its lead "
        "section, {train,valid,test}.jsonl with id, title, lead, body."
    ),
    licence=WIKITEXT_LICENCE,
    citation=WIKITEXT_CITATION,
    homepage=WIKITEXT_HOME,
    remotes=(),
    arrange=arrange_wikisum,
    requires=("wikitext2",),
)

DATASETS = {WIKISUM.name: WIKISUM}
