"""Run a scenario through Flower's simulation engine (Ray backend) on this machine.

The ServerApp and ClientApp are the project's own Flower components, named as in
``[tool.flwr.app.components]`` and loaded by reference (as ``flwr run`` does), so the library does
not import them. Flower's ``run_simulation`` has no run config, so the scenario travels to both
apps as run-config overrides.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from fedunlearn import interrupt
from fedunlearn.config import Settings, settings_to_flat
from fedunlearn.errors import FederationError, NodesMissingError, RunStateError
from fedunlearn.federation.workflow import TrainReport
from fedunlearn.progress import Reporter

__all__ = [
    "CLIENT_APP_FACTORY",
    "SERVER_APP_FACTORY",
    "prepare_simulation",
    "quiet_flower",
    "run_apps",
    "simulate",
    "stop_ray",
    "stop_strays",
]

#: Seconds the ServerApp gets to reach a safe point after Ctrl-C before the engine's workers are killed.
STOP_GRACE = 3.0
SERVER_APP_FACTORY = "server.app:make_app"
CLIENT_APP_FACTORY = "clients.app:make_app"


def quiet_flower() -> None:
    """No telemetry or update checks (no network here), and Flower/Ray logs at WARNING."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # Ray's C++ failure-signal handler turns SIGTERM of the driver into an abort (status 134);
    # fedunlearn handles SIGTERM itself (fedunlearn.interrupt) and stops the engine cleanly
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    if not os.environ.get("FEDUNLEARN_VERBOSE"):
        import logging

        # run_simulation's deprecation notice and Ray's start-up chatter; errors still show
        logging.getLogger("flwr").setLevel(logging.ERROR)


def _load(ref: str):
    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise FederationError(
            f"cannot load the Flower component {ref!r}: {exc}. Install the project (pip install -e .) "
            "or run from the repository root"
        ) from exc


def prepare_simulation(settings: Settings, run_dir: Path, *, reporter: Reporter | None = None) -> Settings:
    """Resolve the base model (building the embedded default if needed) and materialize synthetic data.

    Returns the settings the apps will run with: ``model.path`` is an explicit local folder, and
    when the consortium is synthetic it is saved under ``RUN_DIR/data`` and ``data.dir`` points there.
    """
    from fedunlearn.data import save_consortium
    from fedunlearn.models import resolve_model_path
    from fedunlearn.data.generated import synthetic_consortium

    from fedunlearn.runs import RunFolder

    run_dir = Path(run_dir)
    base = resolve_model_path(settings.model.path or None, size=settings.model.size)
    settings = settings.replace(model={"path": str(base)}, run={"dir": str(run_dir.resolve())})
    synthetic = not settings.data.dir and not any(o.data for o in settings.organizations)
    data_dir = run_dir / "data"
    if synthetic:
        settings = settings.replace(data={"dir": str(data_dir.resolve())})
    else:  # in this process, before any run folder or engine exists: one clear message per problem
        check_organization_data(settings, skip=_erased(run_dir))
    RunFolder.create_or_resume(run_dir, settings, base)  # refuses a foreign folder before writing
    if synthetic and not (data_dir / "manifest.json").exists():
        consortium = synthetic_consortium(settings)
        save_consortium(consortium, data_dir)
        if reporter:
            kind = "real-text" if settings.data.text == "real" else "synthetic"
            reporter.message(f"{kind} consortium of {len(consortium.organizations)} organizations saved to {data_dir}")
    return settings


def _erased(run_dir: Path) -> tuple[str, ...]:
    """Organizations already erased from the run in ``run_dir`` (none for a new run): they never train
    again, and their records were removed from the run."""
    if not (Path(run_dir) / "ledger.sqlite").is_file():
        return ()
    from fedunlearn.ledger import Ledger

    with Ledger.open(run_dir) as ledger:
        return tuple(o.name for o in ledger.organizations() if o.status == "erased")


def check_organization_data(settings: Settings, *, skip: tuple[str, ...] = ()) -> None:
    """Load every organization's data as its ClientApp will; raise one DataError listing each problem.

    Run before Flower starts, so that a malformed file, a missing folder or an empty organization
    is reported once, by file and line, instead of inside every simulated node's traceback.
    Organizations in ``skip`` (erased from the run) are not checked: they never train again.
    """
    from fedunlearn.errors import ConfigError, DataError
    from fedunlearn.training.client import organization_data

    problems = []
    for org in settings.organizations:
        if org.name in skip:
            continue
        try:
            data = organization_data(settings, org.name)
        except (DataError, ConfigError) as exc:
            problems.append(f"{org.name}: {exc}")
            continue
        if not data.train:
            problems.append(f"{org.name}: no training records; add records to its train.jsonl or leave it out "
                            "of [[organizations]]")
    if problems:
        raise DataError(f"{len(problems)} organization(s) have unusable data (nothing was started or written):\n  - "
                        + "\n  - ".join(problems))


class _Descendants:
    """Remembers every process descended from this one while a simulation runs.

    Flower's Ray backend shuts Ray down itself; the actor processes then lose their parent
    (raylet) and are re-parented to init before they exit, so they can no longer be found as
    descendants afterwards. Polling during the run keeps hold of them (psutil's Process objects
    also guard against PID reuse).
    """

    def __init__(self, interval: float = 0.5, record: Path | None = None) -> None:
        import psutil

        self._me = psutil.Process()
        self._seen: dict[int, object] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._record = record  # the PIDs (and start times), so that a rerun after a kill -9 stops them
        self._recorded = 0

    def _poll(self) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):  # this process is exiting: nothing more to find
            for p in self._me.children(recursive=True):
                self._seen.setdefault(p.pid, p)
        if self._record is not None and len(self._seen) != self._recorded:
            rows = []
            for p in list(self._seen.values()):
                with contextlib.suppress(psutil.Error):
                    rows.append({"pid": p.pid, "started": p.create_time()})
            with contextlib.suppress(OSError):
                tmp = self._record.with_suffix(".tmp")
                tmp.write_text(json.dumps(rows), encoding="utf-8")
                os.replace(tmp, self._record)
            self._recorded = len(self._seen)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._poll()

    def __enter__(self) -> _Descendants:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        stop_ray(list(self._seen.values()))
        if self._record is not None:
            with contextlib.suppress(OSError):
                self._record.unlink()

    def kill(self) -> None:
        """Kill every process the engine started (a stop that cannot wait for work in flight)."""
        import psutil

        self._poll()
        procs = [p for p in self._seen.values() if isinstance(p, psutil.Process)]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=5)


#: Where a run's engine processes are recorded while Flower's simulation engine runs.
ENGINE_PIDS = "engine-processes.json"


def stop_strays(run_dir: Path, reporter: Reporter | None = None) -> int:
    """Kill the engine processes a killed earlier process left running for ``run_dir``; return how many.

    Only processes recorded in ``RUN_DIR/engine-processes.json`` whose PID *and* start time still
    match are touched (a reused PID belongs to someone else).
    """
    import psutil

    path = Path(run_dir) / ENGINE_PIDS
    if not path.is_file():
        return 0
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rows = []
    strays = []
    for row in rows if isinstance(rows, list) else []:
        with contextlib.suppress(psutil.Error, KeyError, TypeError):
            proc = psutil.Process(int(row["pid"]))
            if abs(proc.create_time() - float(row["started"])) < 0.01 and proc.pid != os.getpid():
                strays.append(proc)
    for proc in strays:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(strays, timeout=5)
    with contextlib.suppress(OSError):
        path.unlink()
    if strays and reporter is not None:
        reporter.message(f"stopped {len(strays)} engine processes left running by an earlier, killed run")
    return len(strays)



@contextlib.contextmanager
def _keep_sigterm_handler():
    """``ray.init`` replaces the driver's SIGTERM handler with ``sys.exit``, which aborts the process
    (status -6) while Flower's threads run; keep fedunlearn's handler (:mod:`fedunlearn.interrupt`)
    by making Ray's private setter a no-op while the engine runs (ray 2.x; absent: nothing to do)."""
    try:
        import ray._private.utils as ray_utils
    except ImportError:  # pragma: no cover - ray is a dependency
        yield
        return
    original = getattr(ray_utils, "set_sigterm_handler", None)
    if original is None:
        yield
        return
    ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = original


def _stop_watch(descendants: _Descendants, done: threading.Event, grace: float) -> None:
    """After a requested stop, give the ServerApp ``grace`` s to end, then kill the engine's
    workers so that a client's training in flight does not hold the stop up."""
    while not done.wait(0.2):
        if interrupt.requested():
            if not done.wait(grace):
                descendants.kill()
            return


def stop_ray(procs: list | None = None, grace: float = 15.0) -> None:
    """Shut Ray down and make sure none of ``procs`` (and this process' children) outlives it."""
    import psutil

    procs = list(procs or []) + psutil.Process().children(recursive=True)
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    procs += psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):  # exited between the wait and the kill
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def simulate(settings: Settings, run_dir: Path, *, reporter: Reporter | None = None) -> TrainReport:
    """Train ``settings``' consortium into ``run_dir`` through Flower's simulation engine.

    Resumes when ``run_dir`` holds an interrupted run with the same settings.
    """
    quiet_flower()
    if (Path(run_dir) / "run.json").exists():
        from fedunlearn.runs import RunFolder

        existing = RunFolder.open(run_dir).settings
        # resume with the settings the run was made with (paths were already resolved then)
        settings = settings.replace(model={"path": existing.model.path or settings.model.path},
                                    data={"dir": existing.data.dir or settings.data.dir})
    settings = prepare_simulation(settings, run_dir, reporter=reporter)
    results = run_apps(settings, reporter=reporter)
    if not results:
        raise RunStateError(
            f"the simulation ended without finishing the run in {str(run_dir)!r}; see the log above. "
            "Run the same command again to resume from the last committed round"
        )
    return results[0]


def run_apps(settings: Settings, *, reporter: Reporter | None = None, workflow: Callable[..., object] | None = None) -> list:
    """Run the ServerApp (with ``workflow``, default training) and one ClientApp per organization.

    Returns what the workflow returned (a one-element list), or an empty list when the ServerApp
    failed: Flower logs a ServerApp's exception instead of raising it.
    """
    quiet_flower()
    import torch
    from flwr.simulation import run_simulation

    overrides = settings_to_flat(settings)
    results: list = []
    extra = {"workflow": workflow} if workflow is not None else {}
    server_app = _load(SERVER_APP_FACTORY)(overrides, reporter=reporter, results=results, **extra)
    client_app = _load(CLIENT_APP_FACTORY)(overrides)
    cpus = max(1, os.cpu_count() or 1)
    gpus = 1 if torch.cuda.is_available() else 0
    backend = {
        # one actor using every core beat several small actors on 2 cores (FIELD-NOTES)
        "client_resources": {"num_cpus": cpus, "num_gpus": float(gpus)},
        "init_args": {"num_cpus": cpus, "num_gpus": gpus, "include_dashboard": False,
                      "logging_level": "ERROR", "log_to_driver": True},
    }
    run_dir = Path(settings.run.dir) if settings.run.dir else None
    if run_dir is not None:
        stop_strays(run_dir, reporter)
    for attempt in (1, 2):
        try:
            record = run_dir / ENGINE_PIDS if run_dir is not None and run_dir.is_dir() else None
            with _Descendants(record=record) as descendants, interrupt.stop_on_signals(on_force=descendants.kill), \
                    _keep_sigterm_handler():
                done = threading.Event()
                watch = threading.Thread(target=_stop_watch, args=(descendants, done, STOP_GRACE), daemon=True)
                watch.start()
                try:
                    run_simulation(server_app=server_app, client_app=client_app,
                                   num_supernodes=len(settings.organizations) + len(settings.canary_organizations),
                                   backend_config=backend)
                finally:
                    done.set()
            interrupt.check()  # the ServerApp stopped at a safe point; the caller says what was kept
            return results
        except NodesMissingError as exc:
            # Seen on a loaded 2-core machine: a Ray helper process aborts at start-up and the
            # simulated nodes never answer. Nothing was trained yet, so one fresh start is safe.
            if attempt == 2:
                raise
            if reporter:
                reporter.message(f"simulated organizations did not start ({exc}); restarting Ray once")
    return results
