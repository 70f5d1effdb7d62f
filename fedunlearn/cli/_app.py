"""The Typer application every ``fedunlearn`` sub-command registers on."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from fedunlearn import __version__
from fedunlearn.errors import FedUnlearnError

__all__ = ["app", "console", "err_console", "fail"]

app = typer.Typer(
    name="fedunlearn",
    help="Federated LoRA fine-tuning in which any organization can be erased, provably.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def fail(exc: FedUnlearnError) -> None:
    """Print a fedunlearn error (it names the bad value and the fix) and exit with status 2."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)


def _version(value: bool) -> None:
    if value:
        console.print(f"fedunlearn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Federated LoRA fine-tuning with erasure on request (Flower + peft)."""
