"""``fedunlearn demo | simulate | export | info``: train a consortium and look at the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from fedunlearn.cli._app import app, console, fail as _fail
from fedunlearn.errors import FedUnlearnError


def _summary(report) -> None:
    from fedunlearn.ledger import Ledger
    from fedunlearn.runs import RunFolder

    run = RunFolder.open(report.run_dir)
    table = Table(title="organizations", show_lines=False)
    # holdout: after its first evaluated round, then after the last (against the base model: the table below)
    for col in ("organization", "shard", "joined", "rounds", "train loss first→last",
                "holdout loss first→last evaluation"):
        table.add_column(col)
    evals: dict[str, list[float]] = {}
    for row in run.read_metrics():
        if row.get("kind") == "evaluate":
            evals.setdefault(row["org"], []).append(row["eval-loss"])
    with Ledger.open(run.path) as ledger:
        for org in ledger.organizations():
            losses = [(c.metrics.get("train-loss-first"), c.metrics.get("train-loss"))
                      for ckpt in ledger.chain(org.shard) for c in ledger.contributions(ckpt.id) if c.org == org.name]
            train = f"{losses[0][0]:.3f} → {losses[-1][1]:.3f}" if losses else "-"
            ev = evals.get(org.name, [])
            hold = f"{ev[0]:.3f} → {ev[-1]:.3f}" if ev else "-"
            table.add_row(org.name, str(org.shard), f"round {org.join_round}", str(len(losses)), train, hold)
        stats = ledger.stats()
    console.print(table)
    console.print(f"[bold]run folder[/]      {run.path.resolve()}")
    if report.served is None:  # every organization's DP budget was spent before it trained a round
        console.print("[bold]served adapter[/]  none: no round was trained within dp.max-epsilon (see above)")
        return
    console.print(f"[bold]served adapter[/]  {report.served.path.resolve()}  (sha256 {report.served.hash[:16]}…)")
    console.print(f"[bold]ledger[/]          {stats}")
    console.print("load it:  [cyan]from fedunlearn.models import load_served; "
                  f"model = load_served('{report.served.path.resolve()}')[/]")
    console.print(f"inspect:  [cyan]fedunlearn info --run {run.path}[/]")


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: runs/demo-<time>)."),
    text: str = typer.Option("real", "--text", help="real: one organization per source of real text found on "
                             "this machine (licenses, manuals, packages, Perl docs); synthetic: templated records."),
    organizations: int = typer.Option(4, "--organizations", min=1, max=64,
                                      help="Number of organizations (at most the real-text sources present)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1,
                                         help="Federated rounds (default: 8 with real text, 3 synthetic)."),
    shards: int = typer.Option(1, "--shards", min=1, help="Isolated shards (1 = plain FedAvg)."),
    size: str = typer.Option("small", "--size", help="Embedded model size: small or large (see fedunlearn model build)."),
    key_dir: Optional[Path] = typer.Option(None, "--key-dir", help="Folder for this run's keys/ and secrets/ "
                                           "outside the run folder (setting run.key-dir; default: inside it)."),
) -> None:
    """Fine-tune a LoRA adapter on a consortium through Flower's simulation engine, then show what it learned."""
    from fedunlearn.config import OrganizationSettings, Settings
    from fedunlearn.data.realorgs import DEMO_SCHEDULE
    from fedunlearn.data.realtext import ORGANIZATION_SOURCES
    from fedunlearn.errors import ConfigError
    from fedunlearn.federation.simulation import simulate
    from fedunlearn.federation.workflow import default_run_dir
    from fedunlearn.progress import RichReporter

    try:
        if text not in ("real", "synthetic"):
            raise ConfigError(f"--text {text!r} is invalid: expected 'real' or 'synthetic'")
        if text == "real":
            if organizations > len(ORGANIZATION_SOURCES):
                raise ConfigError(f"--organizations {organizations}: the real-text demo has one organization per "
                                  f"source ({', '.join(ORGANIZATION_SOURCES)}), at most {len(ORGANIZATION_SOURCES)}; "
                                  "use --text synthetic for more")
            names = list(ORGANIZATION_SOURCES[:organizations])
            rounds = rounds or DEMO_SCHEDULE["rounds"]
            train = {"rounds": rounds, "local_epochs": DEMO_SCHEDULE["epochs"], "lr": DEMO_SCHEDULE["lr"]}
            extra = {"lora": {"target_modules": DEMO_SCHEDULE["target_modules"]},
                     "data": {"text": "real", "records_per_org": DEMO_SCHEDULE["records"],
                              "canaries_per_org": DEMO_SCHEDULE["canaries"], "canary_repeats": DEMO_SCHEDULE["repeats"]}}
        else:
            names = [f"org-{i}" for i in range(organizations)]
            rounds = rounds or 3
            train, extra = {"rounds": rounds}, {}
        settings = Settings(organizations=tuple(OrganizationSettings(name=n) for n in names))
        settings = settings.replace(run={"name": "demo", "key_dir": str(key_dir.resolve()) if key_dir else ""},
                                    model={"size": size}, train=train, topology={"shards": shards}, **extra)
        out = out or default_run_dir(settings)
        console.print(f"[bold]fedunlearn demo[/]: {organizations} organizations ({text} text), {rounds} rounds, "
                      f"{shards} shard(s), {size} model → {out}")
        report = simulate(settings, out, reporter=RichReporter())
        _summary(report)
        if report.served is not None:
            from fedunlearn.cli._learned import print_learned

            print_learned(report.run_dir)
    except FedUnlearnError as exc:
        _fail(exc)


@app.command()
def simulate(
    scenario: Path = typer.Option(..., "--scenario", help="Scenario TOML file (see simulations/consortium.toml)."),
    out: Path = typer.Option(..., "--out", help="Run folder; an interrupted run there is resumed."),
    key_dir: Optional[Path] = typer.Option(None, "--key-dir", help="Folder for this run's keys/ and secrets/ "
                                           "outside the run folder, so a backup of the run holds no key "
                                           "(overrides the scenario's run.key-dir)."),
) -> None:
    """Run a scenario through Flower's simulation engine (resumes an interrupted run)."""
    from fedunlearn.config import load_scenario
    from fedunlearn.federation.simulation import simulate as run_sim
    from fedunlearn.progress import RichReporter

    try:
        settings = load_scenario(scenario)
        if key_dir is not None:
            settings = settings.replace(run={"key_dir": str(key_dir.resolve())})
        report = run_sim(settings, out, reporter=RichReporter())
        _summary(report)
    except FedUnlearnError as exc:
        _fail(exc)


@app.command()
def export(
    run: Path = typer.Option(..., "--run", help="Run folder."),
    out: Path = typer.Option(..., "--out", help="Destination folder for the PEFT adapter."),
) -> None:
    """Copy the served model (a standard PEFT adapter folder) out of a run."""
    from fedunlearn.federation.serving import copy_served
    from fedunlearn.runs import RunFolder

    try:
        dest = copy_served(RunFolder.open(run), out)  # and logged: `verify --export DEST` names this copy
        console.print(f"exported to {dest.resolve()}")
        console.print(f"load it: from fedunlearn.models import load_served; model = load_served('{dest.resolve()}')")
    except FedUnlearnError as exc:
        _fail(exc)


@app.command()
def info(
    run: Path = typer.Option(..., "--run", help="Run folder."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Organizations, shards, rounds and lineage of a run."""
    from fedunlearn.ledger import Ledger
    from fedunlearn.runs import RunFolder

    try:
        folder = RunFolder.open(run)
        with Ledger.open(folder.path) as ledger:
            orgs = []
            for o in ledger.organizations():
                deps = ledger.dependents(o.name)
                orgs.append({"name": o.name, "shard": o.shard, "join_round": o.join_round, "status": o.status,
                             "served_components_depending": [{"shard": d.shard, "since_round": d.since_round}
                                                             for d in deps]})
            shards = []
            for s in range(folder.settings.topology.shards):
                head = ledger.head(s)
                shards.append({"shard": s, "round": head.round if head else None,
                               "head": head.hash if head else None, "members": [o.name for o in ledger.organizations()
                                                                                 if o.shard == s]})
            doc = {"run": str(folder.path.resolve()), "base_model": str(folder.base_model),
                   "rounds": folder.settings.train.rounds, "organizations": orgs, "shards": shards,
                   "served": ledger.served(), "ledger": ledger.stats()}
    except FedUnlearnError as exc:
        _fail(exc)
        return
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
        return
    console.print(f"[bold]run[/] {doc['run']}  base model {doc['base_model']}")
    t = Table(title="organizations")
    for c in ("organization", "shard", "joined", "status", "served model depends on it"):
        t.add_column(c)
    for o in orgs:
        dep = ", ".join(f"shard {d['shard']} since round {d['since_round']}" for d in o["served_components_depending"]) or "no"
        t.add_row(o["name"], str(o["shard"]), str(o["join_round"]), o["status"], dep)
    console.print(t)
    t = Table(title="shards")
    for c in ("shard", "round", "head", "members"):
        t.add_column(c)
    for s in shards:
        t.add_row(str(s["shard"]), str(s["round"]), (s["head"] or "-")[:16], ", ".join(s["members"]))
    console.print(t)
    served = doc["served"]
    console.print(f"[bold]served[/] {served['path'] if served else 'not exported yet'}")
    console.print(f"[bold]ledger[/] {doc['ledger']}")
