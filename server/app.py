"""fedunlearn ServerApp: ``flwr run .`` trains the consortium described by the run config."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedunlearn.config import Settings, settings_from_flat
from fedunlearn.federation.workflow import train_workflow
from fedunlearn.progress import Reporter

__all__ = ["app", "make_app"]


def make_app(overrides: Mapping[str, object] | None = None, *, reporter: Reporter | None = None,
             results: list | None = None, workflow: Callable[..., object] | None = None) -> ServerApp:
    """A ServerApp whose run config is Flower's, updated with ``overrides``.

    ``fedunlearn simulate`` passes the scenario as overrides (Flower's ``run_simulation`` has no
    run config of its own); ``flwr run .`` uses ``app`` below with ``[tool.flwr.app.config]``.
    ``workflow(grid, settings, *, reporter)`` replaces training (default ``train_workflow``), e.g.
    ``fedunlearn.unlearning.service.erasure_workflow(request)``; its return value goes to ``results``.
    Without ``workflow``, the run config chooses: ``run.workflow = "train"`` (default) or ``"erase"``
    (erase ``run.erase-orgs`` with ``run.erase-method`` from the run folder ``run.dir``), which is how
    ``flwr run`` against a deployment erases an organization.
    """
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        flat = {**dict(context.run_config), **dict(overrides or {})}
        settings = settings_from_flat(flat)
        report = (workflow or _configured_workflow(settings))(grid, settings, reporter=reporter)
        if results is not None:
            results.append(report)

    return server


def _configured_workflow(settings: Settings) -> Callable[..., object]:
    """The workflow ``run.workflow`` names (train, or erase ``run.erase-orgs``)."""
    if settings.run.workflow == "erase":
        from fedunlearn.unlearning.service import certified_erasure_workflow
        from fedunlearn.unlearning import EraseRequest

        orgs = tuple(o.strip() for o in settings.run.erase_orgs.split(",") if o.strip())
        # authorized (coordinator-signed, logged) before, certified after, as `fedunlearn forget` does
        from fedunlearn.evaluate.before import capture_before  # the judge, handed to the service as a hook

        return certified_erasure_workflow(EraseRequest(orgs, method=settings.run.erase_method, requested_by="flwr run"),
                                          before=capture_before)
    return live_train_workflow


def live_train_workflow(grid: Grid, settings: Settings, *, reporter: Reporter | None = None) -> object:
    """Training that honors erasure requests waiting in the run's inbox before every round
    (``fedunlearn requests --run RUN --submit FILE``; see fedunlearn.unlearning.live)."""
    from fedunlearn.evaluate.before import capture_before
    from fedunlearn.unlearning.live import apply_pending

    def between_rounds(grid: Grid, run_dir, rnd: int) -> None:
        apply_pending(run_dir, grid, reporter=reporter, before=capture_before)

    return train_workflow(grid, settings, reporter=reporter, between_rounds=between_rounds)


app = make_app()
