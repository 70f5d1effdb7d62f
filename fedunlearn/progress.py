"""Progress reporting that works in a terminal (rich bars) and in Flower processes (log lines)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from collections.abc import Iterator

__all__ = ["LogReporter", "Reporter", "RichReporter"]

_log = logging.getLogger("fedunlearn")


class Reporter:
    """Interface: a task with a total, advanced step by step, plus free-form messages."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[callable]:
        yield lambda n=1, note="": None

    def message(self, text: str) -> None:
        _log.info(text)


class LogReporter(Reporter):
    """Progress as log lines (used inside ``flwr run`` processes, which have no terminal)."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[callable]:
        done = [0]

        def advance(n: int = 1, note: str = "") -> None:
            done[0] += n
            _log.info("%s: %d/%d %s", description, done[0], total, note)

        yield advance


class RichReporter(Reporter):
    """Progress bars on the terminal with ``rich``."""

    def __init__(self, console=None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[callable]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[note]}"), console=self.console, transient=False,
        ) as bar:
            tid = bar.add_task(description, total=total, note="")

            def advance(n: int = 1, note: str = "") -> None:
                bar.update(tid, advance=n, note=note)

            yield advance

    def message(self, text: str) -> None:
        self.console.print(text)
