"""Ctrl-C and SIGTERM: stop long work at a safe point and say what was kept.

Two regimes:

* **Plain work in the main thread** (evaluation, model builds, benchmarks): SIGINT raises
  ``KeyboardInterrupt`` as usual and SIGTERM is turned into one (:func:`terminate_as_interrupt`),
  so ``finally`` blocks and atomic writes clean up; the CLI reports it (:data:`EXIT_CODE`).
* **Flower's simulation engine** (``simulate``, ``forget`` through Flower): Flower runs the
  ServerApp in a thread of its own and waits on its workers in the main thread, so an exception in
  the main thread would leave the ServerApp training. Inside :func:`stop_on_signals` a first signal
  only *requests* a stop; the coordinator checks :func:`check` at safe points (every wait for
  replies, node discovery, between rounds) and raises :class:`Interrupted`, so the ServerApp ends
  with every committed round kept and an erasure journaled or not started. The engine's processes
  are then stopped (:func:`fedunlearn.federation.simulation.run_apps`). A second signal forces: the
  registered force hooks kill the engine's processes and the process exits at once.

Committed rounds are SQLite transactions and erasures are journaled, so running the same command
again resumes where the stop left off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from fedunlearn.errors import FedUnlearnError

__all__ = ["EXIT_CODE", "Interrupted", "check", "clear", "request", "requested", "stop_on_signals",
           "terminate_as_interrupt"]

EXIT_CODE = 130  # 128 + SIGINT, the shell's convention
_STOP = threading.Event()
_REASON = ["a stop request"]


class Interrupted(FedUnlearnError):
    """Work was stopped on request (SIGINT, SIGTERM) at a safe point; committed work is kept."""


def requested() -> bool:
    """Whether a stop was requested (and not yet cleared)."""
    return _STOP.is_set()


def request(reason: str = "a stop request") -> None:
    """Request a stop, as a first SIGINT does (tests and embedding code use this)."""
    _REASON[0] = reason
    _STOP.set()


def clear() -> None:
    _STOP.clear()
    _REASON[0] = "a stop request"


def check(where: str = "") -> None:
    """Raise :class:`Interrupted` if a stop was requested; call it at safe points."""
    if _STOP.is_set():
        raise Interrupted(f"stopped by {_REASON[0]}" + (f" {where}" if where else ""))


def _say(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # stderr closed: nothing to tell
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


@contextlib.contextmanager
def stop_on_signals(on_force: Callable[[], None] | None = None) -> Iterator[None]:
    """While inside, a first SIGINT/SIGTERM requests a stop; a second runs ``on_force`` and exits.

    Outside the main thread (signals cannot be handled there) it does nothing. The previous
    handlers come back on exit; the stop request stays set for the caller to report.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if _STOP.is_set():
            _say(f"{name} again: forcing the stop now; the last committed round stays, rerun the command to resume")
            if on_force is not None:
                with contextlib.suppress(Exception):
                    on_force()
            os._exit(EXIT_CODE)
        request(name)
        _say(f"{name}: stopping at the next safe point (committed rounds are kept; the engine is shut down "
             "in a few seconds). Press Ctrl-C again to force")

    clear()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def terminate_as_interrupt() -> None:
    """Make SIGTERM raise ``KeyboardInterrupt`` in the main thread (as SIGINT does), so cleanup runs.

    SIGINT raises it too even when the process inherited SIGINT as ignored (a command started in
    the background by a non-interactive shell, ``cmd &``, does): such a process gets SIGINT only from
    an explicit ``kill -INT``, which asks it to stop.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
