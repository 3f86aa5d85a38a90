"""Progress of long work: plain lines in a file or a pipe (the first after a second, then
every EVERY_SECONDS, and the end), a live line in a terminal, nothing for quick work."""

import pytest

from seqgen import progress as progress_module
from seqgen.progress import Progress, amount, dataset_bars


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "seqgen"]


def test_lines_in_a_file_first_after_a_second_then_every_interval(clock, caplog):
    caplog.set_level("INFO", logger="seqgen")
    work = Progress("translated", 1000, "sentences", every_seconds=15)
    for _ in range(10):  # 10 items in 0.625 s: quiet so far
        clock.now += 0.0625
        work(1)
    assert lines(caplog) == []
    clock.now += 1.0
    work(10)
    assert lines(caplog) == [
        "translated 20/1,000 sentences (2%)  12.3/s  elapsed 0:00:02  ETA 0:01:20"
    ]
    for _ in range(29):  # 14.5 s more: no new line before 15 s have passed
        clock.now += 0.5
        work(10)
    assert len(lines(caplog)) == 1
    clock.now += 0.5
    work(10)
    assert len(lines(caplog)) == 2 and lines(caplog)[1].startswith("translated 320/1,000")
    work(680)  # the total: the last line says done
    assert lines(caplog)[-1].startswith("translated 1,000/1,000 sentences (100%)")
    assert lines(caplog)[-1].endswith("(done)")
    work.finish()  # once only
    assert len(lines(caplog)) == 3


def test_quick_work_and_bounded_work(clock, caplog):
    caplog.set_level("INFO", logger="seqgen")
    quick = Progress("scored", 5, "windows")
    quick(5)
    assert lines(caplog) == []
    bounded = Progress("generated", 3000, "tokens", at_most=True)
    clock.now += 2
    bounded.set(400)
    bounded.set(900)  # within the interval: no line
    clock.now += 1
    bounded.finish()
    assert lines(caplog) == [
        "generated 400 tokens (at most 3,000)  200/s  elapsed 0:00:02",
        "generated 900 tokens (at most 3,000)  300/s  elapsed 0:00:03 (done)",
    ]
    unknown = Progress("read", unit="lines for the tokenizer")
    clock.now += 2
    unknown(123_456)
    unknown.finish()
    assert lines(caplog)[-1] == (
        "read 123k lines for the tokenizer  61,728/s  elapsed 0:00:02 (done)"
    )


def test_a_terminal_gets_one_live_line(clock, monkeypatch, capsys):
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: True)
    work = Progress("summarized", 4, "articles")
    clock.now += 2
    work(1)
    clock.now += 0.1  # within the redraw interval: not redrawn
    work(1)
    clock.now += 0.3
    work(2)
    err = capsys.readouterr().err
    assert err.count("\r") == 2 and err.endswith(
        "summarized 4/4 articles (100%)  1.7/s  elapsed 0:00:02\n"
    )


def test_amounts_read_like_counts():
    assert [amount(v) for v in (7, 1234, 99_999, 123_456, 2_500_000, 12.5)] == [
        "7",
        "1,234",
        "99,999",
        "123k",
        "2.5M",
        "12.5",
    ]


def test_dataset_bars_only_in_a_terminal():
    from datasets.utils import logging as datasets_logging

    datasets_logging.enable_progress_bar()
    with dataset_bars():  # pytest's stderr is no terminal
        assert not datasets_logging.is_progress_bar_enabled()
    assert datasets_logging.is_progress_bar_enabled()  # as it was
