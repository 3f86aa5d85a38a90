"""The text of generated ids: released in pieces as the ids arrive (incremental
detokenization), and cut at stop strings, which are looked for in the tail only."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

MOST_CHARACTER_IDS = 4  # a UTF-8 character has at most 4 bytes, so at most 4 byte-level ids


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cuts = [text.find(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


def text_pieces(tokens: Iterator[int], decode, stop: Sequence[str]) -> Iterator[str]:
    """The text of `tokens` in pieces as they arrive (see `TextPieces`)."""
    pieces = TextPieces(decode, stop)
    for token in tokens:
        if piece := pieces.add(token):
            yield piece
    if rest := pieces.finish():
        yield rest


class TextPieces:
    """The text of ids as they arrive, cut at the first stop string, released in pieces: a
    piece holds whole characters only (not the first bytes of one) and never a tail that
    could be the start of a stop string. Each id decodes the few ids since the last whole
    piece, not the whole output (incremental detokenization, as vLLM's)."""

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self.decode, self.stop = decode, tuple(stop)
        self.ids: list[int] = []
        self.start = self.read = 0  # ids[start:read] decode to the end of `text`
        self.text = ""  # whole characters decoded so far
        self.end: int | None = None  # where the first stop string starts, once there is one
        self.shown = 0

    def add(self, token: int) -> str:
        """Take the next id; returns the text that can be shown now ('' if none)."""
        self.ids.append(token)
        if self.end is not None:
            return ""
        read, after = len(self.ids), self.decode(self.ids[self.start :])
        if after.endswith("\ufffd"):  # the first bytes of a character, or bytes that are none
            if read - self.read < MOST_CHARACTER_IDS:
                return ""
            read -= MOST_CHARACTER_IDS - 1  # a character still open began after these
            after = self.decode(self.ids[self.start : read])
        if not self._extend(read, after) or self.end is not None:
            return ""  # the new ids rewrite the last character, or a stop string began
        held = max(
            (n for s in self.stop for n in range(1, len(s)) if self.text.endswith(s[:n])), default=0
        )
        return self._release(len(self.text) - held)

    def finish(self) -> str:
        """The rest of the text, once no id will come (a last incomplete character as the
        tokenizer decodes it)."""
        if self.end is None and self.read < len(self.ids):
            self._extend(len(self.ids), self.decode(self.ids[self.start :]), force=True)
        return self._release(len(self.text) if self.end is None else self.end)

    def _extend(self, read: int, after: str, force: bool = False) -> bool:
        """Add the text of ids[self.read:read] to `text`, given `after`, the decoding of
        ids[self.start:read]; False (and nothing added) where `after` does not continue what
        ids[self.start:self.read] decode to, unless `force`."""
        before = self.decode(self.ids[self.start : self.read])
        if not (force or after.startswith(before)):
            return False
        searched_from = len(self.text)
        self.text += after[len(before) :]
        self.start, self.read = self.read, read
        self.end = _stop_start(self.text, self.stop, searched_from)
        return True

    def _release(self, upto: int) -> str:
        piece = self.text[self.shown : upto] if upto > self.shown else ""
        self.shown = max(self.shown, upto)
        return piece


def _stop_start(text: str, stop: Sequence[str], searched_from: int) -> int | None:
    """Where the first stop string in `text` starts, looking only at what overlaps the text
    after `searched_from` (the text before it held none)."""
    found = [text.find(s, max(0, searched_from - len(s) + 1)) for s in stop]
    found = [place for place in found if place >= 0]
    return min(found) if found else None


def stop_check(
    stop: Sequence[str], decode: Callable[[list[int]], str]
) -> Callable[[list[int]], bool]:
    """A `stop_fn`: whether the text of a row's new ids holds a stop string, decoding only
    their tail (enough ids for the longest stop string), not the whole output at every id.
    Checked after every id, a stop string can only have appeared at the end."""
    longest = max(map(len, stop))

    def stopped(ids: list[int]) -> bool:
        take = longest + 8
        while True:
            text = decode(ids[-take:])
            if take >= len(ids) or len(text) > longest:
                return any(s in text for s in stop)
            take *= 2

    return stopped
