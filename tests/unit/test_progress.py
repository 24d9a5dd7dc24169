"""Off a terminal (DVC, CI, a Prefect worker) progress is plain lines, about every 10 %: finetune
and scratch used to be silent there for 9-10 minutes."""

from __future__ import annotations

from thawline.progress import PlainProgress, progress_bar


def test_without_a_terminal_progress_is_a_line_every_tenth(capsys):
    bar = progress_bar(total=200, desc="finetune", unit="img", mininterval=0)
    assert isinstance(bar, PlainProgress)  # pytest's stderr is not a terminal
    with bar:
        for _ in range(200):
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)
    assert 10 <= len(lines) <= 12, lines  # the start, every 10 %, the end
    assert lines[0].startswith("finetune:   0% 0/200")
    assert lines[-1].startswith("finetune: 100% 200/200") and "img/s]" in lines[-1]


def test_disabled_progress_prints_nothing(capsys):
    with progress_bar(total=10, desc="x", disable=True) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""
