"""`seqgen data wikisum`: WikiText-style text -> article body / lead pairs (JSONL).

WikiText marks an article's title as ` = Title = ` and its sections as ` = = Section = = `
(deeper levels add `=`), each on its own line between blank lines. The lead is the text
before the first section heading; the body is the rest, headings removed. Lines that merely
look like headings (table rows such as ` = Goals ; A = `) are not between blank lines and
stay text.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from seqgen.data import read_text_file
from seqgen.errors import DataError
from seqgen.files import atomic_file
from seqgen.progress import Progress

HEADING = re.compile(r" ?(=(?: =)*) (\S(?:.*\S)?) \1 ?")


@dataclass
class Article:
    title: str
    lead: list[str]  # paragraphs
    body: list[str]  # paragraphs, headings removed


def heading_level(lines: list[str], i: int) -> int:
    """1 for a title, 2+ for a section, 0 if line i is not a heading."""
    match = HEADING.fullmatch(lines[i])
    if match is None or "=" in match.group(2)[:1] + match.group(2)[-1:]:
        return 0
    blank_before = i == 0 or not lines[i - 1].strip()
    blank_after = i + 1 >= len(lines) or not lines[i + 1].strip()
    return match.group(1).count("=") if blank_before and blank_after else 0


def articles(text: str) -> Iterator[Article]:
    lines = text.split("\n")
    current: Article | None = None
    in_lead = True
    for i, line in enumerate(lines):
        level = heading_level(lines, i)
        if level == 1:
            if current is not None:
                yield current
            current, in_lead = Article(line.strip(" =").strip(), [], []), True
        elif level >= 2:
            in_lead = False
        elif current is not None and line.strip():
            (current.lead if in_lead else current.body).append(line.strip())
    if current is not None:
        yield current


def build(text: str, split: str, min_lead_words: int, min_body_words: int):
    """(rows, dropped counts by reason) for one WikiText file."""
    rows, dropped = [], Counter()
    progress = Progress(f"{split}: read", unit="articles")
    for n, article in enumerate(articles(text)):
        progress()
        lead, body = "\n".join(article.lead), "\n".join(article.body)
        lead_words, body_words = len(lead.split()), len(body.split())
        if not article.body:
            dropped["no sections (no body)"] += 1
        elif lead_words < min_lead_words:
            dropped[f"lead under {min_lead_words} words"] += 1
        elif body_words < min_body_words:
            dropped[f"body under {min_body_words} words"] += 1
        else:
            rows.append(
                {
                    "id": f"{split}-{n:04d}",
                    "title": article.title,
                    "lead": lead,
                    "body": body,
                    "lead_words": lead_words,
                    "body_words": body_words,
                }
            )
    progress.finish()
    return rows, dropped


def split_name(path: Path) -> str:
    """wiki.train.tokens -> train; anything else -> the file's stem."""
    parts = path.name.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "wiki" else path.stem


@dataclass(kw_only=True)
class WikisumConfig:
    """Turn WikiText-style files into body -> lead summarization pairs (OUT/<split>.jsonl
    with id, title, lead, body, lead_words, body_words)."""

    input: list[str]
    """WikiText files (wiki.train.tokens, wiki.valid.raw, ...); each becomes a split."""
    out: str
    """Output directory."""
    min_lead_words: int = 30
    """Drop articles whose lead is shorter."""
    min_body_words: int = 100
    """Drop articles whose body is shorter."""


def build_splits(args: WikisumConfig) -> None:
    out = Path(args.out)
    splits = [split_name(Path(f)) for f in args.input]
    if len(set(splits)) != len(splits):
        raise DataError(f"two inputs map to the same split: {', '.join(args.input)}")
    for file, split in zip(args.input, splits, strict=True):
        path = Path(file)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        rows, dropped = build(read_text_file(path), split, args.min_lead_words, args.min_body_words)
        if not rows and not dropped:
            raise DataError(f"{path}: no articles (no ` = Title = ` lines between blank lines)")
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{split}.jsonl"
        with atomic_file(target) as partial:
            partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(dropped.items())) or "none"
        print(f"{target}: {len(rows)} articles from {path} (dropped: {reasons})")
