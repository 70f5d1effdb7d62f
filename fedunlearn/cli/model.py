"""``fedunlearn model build|info`` and ``fedunlearn data real-text``: the embedded models and real text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from fedunlearn.data.realorgs import DEMO_SCHEDULE
from fedunlearn.cli._app import app, console, err_console, fail
from fedunlearn.errors import FedUnlearnError

model_app = typer.Typer(help="The embedded default base models (built locally from text on this machine).",
                        no_args_is_help=True)
app.add_typer(model_app, name="model")
data_app = typer.Typer(help="Organization data written from text on this machine.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_SIZE_HELP = "Model size: small (~1.6M parameters, ~3 min on 2 cores) or large (~21M, about 50 min on 2 cores)."


def _bpb_table(info: dict) -> None:
    from rich.table import Table

    rows = info.get("bits_per_byte") or {}
    table = Table(title="bits per byte (lower is better)")
    for column in ("text", "uniform", "unigram", "model", "texts"):
        table.add_column(column, justify="left" if column == "text" else "right")
    for name, row in rows.items():
        if isinstance(row, dict):
            table.add_row(name, f"{row['uniform']:.3f}", f"{row['unigram']:.3f}", f"{row['model']:.3f}",
                          str(row["texts"]))
    if table.row_count:
        console.print(table)


def _describe(folder: Path, as_json: bool) -> None:
    from fedunlearn.models.default import BUILD_INFO_FILE

    info = json.loads((folder / BUILD_INFO_FILE).read_text())
    if as_json:
        print(json.dumps({"path": str(folder), **{k: v for k, v in info.items() if k != "pretrain"},
                          "pretrain": {k: v for k, v in info["pretrain"].items() if k != "step_losses"}},
                         indent=2, sort_keys=True))
        return
    pre = info["pretrain"]
    console.print(f"model       {folder}")
    console.print(f"parameters  {info['parameters']:,} (vocabulary {info['tokenizer_vocab']})")
    corpus = info.get("corpus", {})
    if corpus.get("kind") == "real":
        used = ", ".join(f"{s['name']} ({s['documents']} documents)" for s in corpus["sources"] if s["documents"])
        console.print(f"corpus      {corpus['bytes_utf8'] / 1e6:.2f} MB, {corpus['documents']} documents: {used}; "
                      f"{corpus['heldout_documents']} held out")
    console.print(f"pre-training {pre.get('steps', len(pre['step_losses']))} steps, {pre['tokens_seen']:,} tokens, "
                  f"{pre['seconds']:.0f} s; loss {pre['initial_loss']:.2f} -> {pre['final_loss']:.2f} nats/token")
    _bpb_table(info)


@model_app.command("build")
def build(
    size: str = typer.Option("small", "--size", help=_SIZE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the build manifest as JSON on stdout."),
) -> None:
    """Build (once) and cache an embedded default model; print its manifest."""
    from fedunlearn.models.default import ensure_default_model, spec_for_size

    try:
        folder = ensure_default_model(spec_for_size(size), progress=not as_json)
        _describe(folder, as_json)
    except FedUnlearnError as exc:
        fail(exc)


@model_app.command("info")
def info(
    size: str = typer.Option("small", "--size", help=_SIZE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the build manifest as JSON on stdout."),
) -> None:
    """Where a default model is cached and what it was built from (without building it)."""
    from fedunlearn.models.default import default_model_dir, spec_for_size

    try:
        folder = default_model_dir(spec_for_size(size))
        if not folder.is_dir():
            err_console.print(f"the {size} default model is not built yet ({folder}); build it with "
                              f"`fedunlearn model build --size {size}`")
            raise typer.Exit(code=1)
        _describe(folder, as_json)
    except FedUnlearnError as exc:
        fail(exc)


_SCENARIO = """\
# Real-text consortium written by `fedunlearn data real-text`: one organization per text source on
# this machine, each its own domain, none of it in the default model's pre-training corpus.
# Run it: fedunlearn simulate --scenario {scenario} --out runs/real-text
[run]
name = "real-text"
seed = {seed}

[model]
size = "{size}"

[lora]
target-modules = "{target_modules}"

[data]
dir = "{data}"
max-length = 64

[train]
rounds = {rounds}
local-epochs = {epochs}
lr = {lr}

[topology]
shards = {shards}
{organizations}"""


def real_text_scenario(data_dir: Path, names: list[str], *, scenario: Path, seed: int, size: str) -> str:
    """The scenario TOML text for a real-text consortium saved in `data_dir`."""
    from fedunlearn.data.realorgs import DEMO_SCHEDULE

    try:
        relative = data_dir.resolve().relative_to(scenario.resolve().parent)
    except ValueError:
        relative = data_dir.resolve()
    organizations = "".join(f'\n[[organizations]]\nname = "{n}"\n' for n in names)
    return _SCENARIO.format(scenario=scenario, seed=seed, size=size, data=relative.as_posix(),
                            organizations=organizations, **DEMO_SCHEDULE)


@data_app.command("real-text")
def real_text(
    out: Path = typer.Option(..., "--out", help="Folder for the organizations' data (one sub-folder each)."),
    scenario: Optional[Path] = typer.Option(None, "--scenario", help="Also write a scenario TOML here "
                                            "(default: OUT/scenario.toml)."),
    records: int = typer.Option(DEMO_SCHEDULE["records"], "--records", min=1, help="Training records per organization."),
    holdout: int = typer.Option(40, "--holdout", min=0, help="Holdout records per organization."),
    canaries: int = typer.Option(DEMO_SCHEDULE["canaries"], "--canaries", min=0, help="Canaries per organization."),
    repeats: int = typer.Option(DEMO_SCHEDULE["repeats"], "--repeats", min=1, help="Copies of each canary in training data."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seeds record selection and secrets."),
    size: str = typer.Option("small", "--size", help="Model size the scenario names (small or large)."),
) -> None:
    """Write a consortium of real text found on this machine (licenses, manuals, packages, Perl docs)."""
    from fedunlearn.data import save_consortium
    from fedunlearn.data.realorgs import real_text_consortium
    from fedunlearn.models.default import spec_for_size

    try:
        spec_for_size(size)
        consortium = real_text_consortium(records_per_org=records, holdout_per_org=holdout,
                                          canaries_per_org=canaries, canary_repeats=repeats, seed=seed)
        save_consortium(consortium, out)
        scenario = scenario or out / "scenario.toml"
        scenario.write_text(real_text_scenario(out, consortium.names, scenario=scenario, seed=seed, size=size))
    except (FedUnlearnError, OSError) as exc:
        fail(exc if isinstance(exc, FedUnlearnError) else FedUnlearnError(f"cannot write {out}: {exc}"))
    for source, why in consortium.params["skipped"].items():
        err_console.print(f"[yellow]skipped {source}:[/] {why}")
    for org in consortium.organizations:
        console.print(f"{org.name:<10} {len(org.train):>4} train records ({len(org.canaries)} canaries x {repeats}), "
                      f"{len(org.holdout)} holdout  -> {out / org.name}")
    console.print(f"scenario    {scenario}")
    console.print(f"run it:     fedunlearn simulate --scenario {scenario} --out runs/real-text")
