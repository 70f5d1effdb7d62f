"""The Typer application every ``fedunlearn`` sub-command registers on."""

from __future__ import annotations

import shlex
import sys

import typer
from rich.console import Console
from rich.markup import escape

from fedunlearn import __version__
from fedunlearn.errors import FedUnlearnError

__all__ = ["app", "console", "err_console", "fail", "resume_hint"]

app = typer.Typer(
    name="fedunlearn",
    help="Federated LoRA fine-tuning in which any organization can be erased, provably.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def resume_hint() -> str:
    """The command line that resumes this one (the same command again)."""
    return "fedunlearn " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "the same command"


def fail(exc: FedUnlearnError) -> None:
    """Print a fedunlearn error (it names the bad value and the fix) and exit with status 2.

    A requested stop (:class:`~fedunlearn.interrupt.Interrupted`) is not an error: it says what was
    kept and how to resume, and exits with 130 (128 + SIGINT).
    """
    from fedunlearn.interrupt import EXIT_CODE, Interrupted

    if isinstance(exc, Interrupted):
        STOP_REPORTED[0] = True
        err_console.print(f"[bold yellow]{escape(str(exc))}[/]: committed rounds and journaled erasures "
                          f"are kept, the engine's processes are stopped. Resume with: {escape(resume_hint())}",
                          soft_wrap=True, highlight=False)
        raise typer.Exit(code=EXIT_CODE)
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)


def _version(value: bool) -> None:
    if value:
        console.print(f"fedunlearn {__version__}")
        raise typer.Exit()


#: A stop was reported by :func:`fail` (the entry point then adds nothing).
STOP_REPORTED = [False]
#: ``--debug`` was given: unexpected errors show their traceback (see fedunlearn.cli.run).
DEBUG = [False]


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an unexpected error."),
) -> None:
    """Federated LoRA fine-tuning with erasure on request (Flower + peft)."""
    DEBUG[0] = debug
