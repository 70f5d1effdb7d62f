"""fedunlearn ServerApp: ``flwr run .`` trains the consortium described by the run config."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedunlearn.config import settings_from_flat
from fedunlearn.federation.workflow import train_workflow
from fedunlearn.progress import Reporter

__all__ = ["app", "make_app"]


def make_app(overrides: Mapping[str, object] | None = None, *, reporter: Reporter | None = None,
             results: list | None = None, workflow: Callable[..., object] | None = None) -> ServerApp:
    """A ServerApp whose run config is Flower's, updated with ``overrides``.

    ``fedunlearn simulate`` passes the scenario as overrides (Flower's ``run_simulation`` has no
    run config of its own); ``flwr run .`` uses ``app`` below with ``[tool.flwr.app.config]``.
    ``workflow(grid, settings, *, reporter)`` replaces training (default ``train_workflow``), e.g.
    ``fedunlearn.federation.erase.erasure_workflow(request)``; its return value goes to ``results``.
    """
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        flat = {**dict(context.run_config), **dict(overrides or {})}
        report = (workflow or train_workflow)(grid, settings_from_flat(flat), reporter=reporter)
        if results is not None:
            results.append(report)

    return server


app = make_app()
