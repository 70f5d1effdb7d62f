"""Run the benchmark suite and write ``benchmarks/RESULTS.md`` (tables, SVG plots, the machine).

Sections (``--only``, comma-separated): ``realtext`` (bits per byte of the embedded default at
``--size`` and what the demo's schedule makes it learn of real text), ``training`` (local training throughput against a plain
PyTorch loop), ``erasure`` (cost and quality of every erasure method against full retraining, one
run, with the retrain seed spread), ``dp`` (DP-SGD and DP-FedAvg against non-private training),
``scale`` (10, 100 and 1000 simulated organizations sampled per round, S shards: wall time per
round, peak server memory, ledger storage before and after compaction). ``--quick`` shrinks every
section to a smoke test. ``--model PATH --device cuda`` runs the same code on a GPU with a larger
local model. Also ``fedunlearn bench``. Usage::

    .venv/bin/python benchmarks/run.py [--only scale,dp] [--quick] [--model PATH] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import ROOT, SECTIONS, Options, run_sections, split_key  # noqa: E402


def bar_chart(*args, **kwargs) -> str:
    """``fedunlearn.evaluate.report.bar_chart``, imported when first drawn (it pulls in torch)."""
    from fedunlearn.evaluate.report import bar_chart as draw

    return draw(*args, **kwargs)


def _f(value: Any, fmt: str = ".2f") -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return format(value, fmt)
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _plot(plots: dict[str, str], name: str, svg: str) -> str:
    plots[name] = svg
    return f"![{name}](plots/{name}.svg)"


def render_training(doc: dict, plots: dict) -> str:
    return "\n".join([
        "## Local training throughput", "",
        f"One organization's {doc['records']} records, {doc['epochs']} epoch(s), batch {doc['batch_size']}, "
        f"device {doc['device']}, torch threads {doc['threads']}; median of the repeats.", "",
        _table(["loop", "tokens/s"], [["fedunlearn `fit_local`", _f(doc["fedunlearn_tokens_per_s"], ".0f")],
                                      ["plain PyTorch loop", _f(doc["plain_tokens_per_s"], ".0f")],
                                      ["**ratio**", f"**{_f(doc['ratio'])}**"]])])


def render_erasure(doc: dict, plots: dict) -> str:
    rows = []
    for label, r in doc["methods"].items():
        rows.append([label, _f(r["wall_seconds"], ".1f"), _f(r["wall_ratio"]), r["client_steps"], _f(r["steps_ratio"]),
                     _f(r["bytes"] / 1e6, ".2f"), _f(r["bytes_ratio"]), _f(r["exposure"]), _f(r["auc_loss"], ".3f"),
                     _f(r["auc_minkpp"], ".3f"), _f(r["holdout_loss"], ".3f"), _f(r.get("kl_to_retrain"), ".4f")])
    spread = doc["retrain_seeds"]
    lo_hi = {k: (min(s[k] for s in spread), max(s[k] for s in spread))
             for k in ("exposure", "auc_loss", "auc_minkpp", "holdout_loss")}
    labels = list(doc["methods"])
    chart = bar_chart("Erasure cost / full retraining", labels, [
        ("wall time", [doc["methods"][m]["wall_ratio"] for m in labels]),
        ("client steps", [doc["methods"][m]["steps_ratio"] for m in labels])], ylabel="ratio to retrain")
    b = doc["before"]
    return "\n".join([
        "## Erasure: cost and quality against full retraining", "",
        f"Scenario: {doc['scenario']} Subject `{doc['subject']}`; trained in {doc['train_seconds']:.0f} s. "
        f"Before erasure: exposure {b['exposure']:.2f} bits, MIA AUC (loss) {b['auc_loss']:.3f}, "
        f"retained holdout loss {b['holdout_loss']:.3f}. Every method erases a copy of the same trained run, "
        "in this one process, one after the other. Wall times are the erasure's own: they exclude the pre-erasure "
        "audit that `fedunlearn forget` runs first for every organization-level method alike"
        + (f" ({doc['capture_before_seconds']:.1f} s here, timed apart; `--no-capture-before` skips it)."
           if doc.get("capture_before_seconds") is not None else "."), "",
        _table(["method", "wall s", "wall / retrain", "client steps", "steps / retrain", "MB sent", "bytes / retrain",
                "exposure (bits)", "AUC loss", "AUC Min-K%++", "retained holdout loss", "KL to retrain"], rows), "",
        f"Retrain seed spread over {len(spread)} seeds: exposure {lo_hi['exposure'][0]:.2f}–{lo_hi['exposure'][1]:.2f} "
        f"bits, AUC loss {lo_hi['auc_loss'][0]:.3f}–{lo_hi['auc_loss'][1]:.3f}, Min-K%++ "
        f"{lo_hi['auc_minkpp'][0]:.3f}–{lo_hi['auc_minkpp'][1]:.3f}, retained holdout loss "
        f"{lo_hi['holdout_loss'][0]:.3f}–{lo_hi['holdout_loss'][1]:.3f}; KL between seeds up to "
        f"{max((s.get('kl_to_retrain') or 0.0) for s in spread):.4f}. (PrivLeak-style reading: a method forgets "
        "as well as retraining when its exposure and AUCs fall inside this spread.)", "",
        *_command_clock(doc), _plot(plots, "erasure_cost", chart)])


def _command_clock(doc: dict) -> list[str]:
    """The whole `fedunlearn forget` by the clock beside the in-process figure (sections measured since)."""
    commands = doc.get("command_seconds")
    if not commands:
        return []
    base = commands["retrain"]
    rows = [[m, _f(c, ".1f"), f"**{_f(c / base, '.2f')}**", _f(doc["methods"][m]["wall_seconds"], ".1f"),
             _f(doc["methods"][m]["wall_ratio"])] for m, c in commands.items() if m in doc["methods"]]
    return ["The same erasures as a user runs them: `fedunlearn forget --run COPY --org "
            f"{doc['subject']} --method M`, the whole command by the clock (a fresh process: start, imports, checks, "
            "authorization, the pre-erasure capture, the erasure, export, certificate), one copy of the trained run "
            "each, timed once (each command is its own cold process: no warm-up, no median), beside the in-process "
            "figure above.", "",
            _table(["method", "command s", "command / retrain", "in-process s", "in-process / retrain"], rows), ""]


def render_length(doc: dict, plots: dict) -> str:
    methods = [m for m in doc["methods"] if m != "retrain"]
    rows = []
    for p in doc["points"]:
        ms = p["methods"]
        rows.append([p["rounds"], p["rounds"] * p["local_epochs"], _f(ms["retrain"]["wall_seconds"], ".1f"),
                     ms["retrain"]["client_steps"]]
                    + [x for m in methods for x in (_f(ms[m]["wall_seconds"], ".2f"), f"**{_f(ms[m]['wall_ratio'], '.3f')}**",
                                                   _f(ms[m]["steps_ratio"], ".3f"), _f(ms[m]["exposure"]),
                                                   _f(ms[m]["holdout_loss"], ".3f"))]
                    + [_f(ms["retrain"]["exposure"]), _f(ms["retrain"]["holdout_loss"], ".3f")])
    chart = bar_chart("Erasure wall time / retrain, by training rounds", [f"R={p['rounds']}" for p in doc["points"]],
                      [(m, [p["methods"][m]["wall_ratio"] for p in doc["points"]]) for m in methods],
                      ylabel="ratio to retrain")
    header = ["R", "R·E", "retrain s", "retrain steps"]
    for m in methods:
        header += [f"{m} s", f"{m} / retrain", f"{m} steps / retrain", f"{m} exposure", f"{m} holdout loss"]
    header += ["retrain exposure", "retrain holdout loss"]
    clock = [p for p in doc["points"] if p.get("command_seconds")]
    if clock:  # the whole command by the clock, per R (measured since this column exists)
        names = list(clock[0]["command_seconds"])
        clock_table = _table(["R"] + [f"{m} command s" for m in names] + [f"{m} command / retrain" for m in names
                                                                          if m != "retrain"],
                             [[p["rounds"]] + [_f(p["command_seconds"][m], ".1f") for m in names]
                              + [f"**{_f(p['command_seconds'][m] / p['command_seconds']['retrain'], '.3f')}**"
                                 for m in names if m != "retrain"] for p in clock])
    return "\n".join([
        "## Erasure cost against the length of training", "",
        "The erasure scenario trained for R rounds (E local epochs each), everything else unchanged; each R is its "
        "own trained run, erased by `retrain` and by the methods' defaults. `retrain` repeats R·E epochs of the "
        "remaining organizations; `influence` costs a fixed few passes (the subject's gradient, the remaining "
        "organizations' Fisher, their gradient after the step) whatever R, and `subtract` K calibration epochs with K "
        "= auto: one every 2 replayed rounds, at least 3 (so K = 3, 5, 10 for R = 5, 10, 20). "
        f"Wall times: median of {doc.get('repeats', 1)} interleaved timings after an untimed warm-up erasure "
        "(`wall_all` in the JSON). Bar of issue #4: wall / retrain ≤ 0.1.", "",
        _table(header, rows), "",
        *(["The whole `fedunlearn forget` command by the clock (a fresh process, the pre-erasure capture included), "
           "one run per method and R:", "", clock_table, ""] if clock else []),
        _plot(plots, "erasure_length", chart)])


def render_dp(doc: dict, plots: dict) -> str:
    rows = [[label, _f(r["seconds"], ".1f"), _f(r["time_ratio"]), _f(r["holdout_loss"], ".3f"), _f(r["loss_delta"], "+.3f"),
             ", ".join(f"{k} ε={v:.2f}" for k, v in (r["epsilon"] or {}).items()) or "–"]
            for label, r in doc["modes"].items()]
    return "\n".join([
        "## DP overhead", "",
        f"{doc['organizations']} organizations, {doc['rounds']} rounds, in-process grid; utility = mean holdout loss "
        "after the last round (lower is better); ε at δ = 1e-5 from the run's audit log (PRV accountant).", "",
        _table(["training", "wall s", "time / non-private", "holdout loss", "Δ loss", "ε"], rows)])


def render_live(doc: dict, plots: dict) -> str:
    base, live = doc["no request"], doc["live request"]
    rows = [[label, _f(r["wall_seconds"], ".1f"), ", ".join(f"shard {s}: {n}" for s, n in sorted(r["round_commits"].items())),
             _f(r.get("delay_seconds"), ".1f") if r.get("delay_seconds") is not None else "–"]
            for label, r in (("no request", base), ("live request", live))]
    return "\n".join([
        "## Erasure requests honored live", "",
        f"{doc['organizations']} organizations in {doc['shards']} shards, {doc['rounds']} rounds on the in-process grid, "
        "requests applied before every round as the ServerApp does; a signed SISA request for "
        f"`{doc['subject']}` (shard 0) arrives before round {doc['request_before_round']}. Delay: queued -> certificate "
        "written. Round commits count every branch (the rolled-back rounds of shard 0 were trained too).", "",
        _table(["training", "wall s", "round commits", "delay s"], rows), "",
        f"Time lost by the other organizations: **{_f(doc['lost_seconds'], '.1f')} s** of wall time over the whole "
        "training (the erasure runs between rounds: every shard waits for it; shard 1's rounds are not retrained)."])


def render_scale(doc: dict, plots: dict) -> str:
    rows = []
    for p in doc["points"]:
        c = p.get("compaction") or {}
        rows.append([p.get("grid", doc["grid"]), p["orgs"], p["fraction"], p["shards"], p["rounds"], _f(p["trained_per_round"], ".1f"),
                     _f(p["round_wall_mean_s"], ".1f"), _f(p["total_s"], ".0f"),
                     _f(p["server_rss_start_mb"], ".0f"), _f(p["server_rss_peak_mb"], ".0f"),
                     _f(p["actors_rss_peak_mb"], ".0f"), _f(p["ledger_bytes"] / 2**20, ".2f"),
                     _f(p["ledger_bytes_per_round"] / 2**20, ".3f"),
                     _f(c.get("ledger_bytes_after", 0) / 2**20, ".2f") if c else "–",
                     "yes" if p.get("verify_before") and p.get("verify_after") else "NO",
                     "/".join(f"{x:.1f}" for x in p["load_average_start"])])
    fewest = min((q["rounds"] for q in doc["points"]), default=0)
    same = [p for p in doc["points"] if p["shards"] == 1 and p["rounds"] == fewest
            and p.get("grid", doc["grid"]) == doc["points"][0].get("grid", doc["grid"])]
    same.sort(key=lambda p: p["orgs"])
    labels = [f"{p['orgs']} (f={p['fraction']})" for p in same]
    charts = [
        bar_chart("Peak server RSS (MB)", labels, [("start", [p["server_rss_start_mb"] for p in same]),
                                                   ("peak", [p["server_rss_peak_mb"] for p in same])], ylabel="MB"),
        bar_chart("Mean wall time per round (s)", labels, [("round", [p["round_wall_mean_s"] for p in same])], ylabel="s"),
        bar_chart("Ledger storage (MB)", labels, [("trained", [p["ledger_bytes"] / 2**20 for p in same]),
                                                 ("compacted", [(p.get("compaction") or {}).get("ledger_bytes_after", 0)
                                                                / 2**20 for p in same])], ylabel="MB")]
    growth = []
    for p in sorted(doc["points"], key=lambda p: (p["shards"], p["rounds"], p["orgs"])):
        extra = p["server_rss_peak_mb"] - p["server_rss_start_mb"]
        growth.append(f"{p['orgs']} orgs ({p.get('grid', doc['grid'])}, f={p['fraction']}, S={p['shards']}, "
                      f"{p['rounds']} rounds): server RSS peak {p['server_rss_peak_mb']:.0f} MB, "
                      f"+{extra:.0f} MB over start ({extra / p['orgs']:.2f} MB/org), ledger "
                      f"{p['ledger_bytes'] / max(p['updates'], 1) / 1024:.1f} KiB per stored update")
    return "\n".join([
        "## Scale", "",
        "Grid: `ray` = Flower's simulation engine, one fresh process per point; `local` = the in-process grid "
        "(real ClientApp and Messages, no Ray; the points share one process, so RSS start includes the earlier "
        "points and the process also holds the clients). "
        "Each organization: 16 records, 8 held out, 1 local epoch; f = share of a shard's members sampled "
        "per round (`topology.sample-fraction`), so about N·f organizations train and evaluate each round. "
        "Round wall time: mean of the seconds between round commits, round 1 left out (it includes "
        "start-up). Server RSS: the process running the ServerApp, ledger, audit log and Flower's driver "
        "(start = before the simulation, after imports). Compacted: ledger after `fedunlearn ledger compact` "
        "(default policy: client updates dropped); verify = `fedunlearn verify` passes before and after.", "",
        _table(["grid", "orgs", "f", "S", "rounds", "trained/round", "s/round", "total s", "RSS start MB", "RSS peak MB",
                "actors MB", "ledger MB", "MB/round", "compacted MB", "verify", "load avg"], rows), "",
        "How it grows: " + "; ".join(growth) + ".", "",
        " ".join(_plot(plots, f"scale_{i}", c) for i, c in enumerate(charts))]
        + [f"\n**Failed point** {f['orgs']} orgs, f={f['fraction']}, S={f['shards']}, {f['rounds']} rounds: "
           f"`{f['error'].strip().splitlines()[-1][:400]}`" for f in doc.get("failed", [])])


def render_realtext(doc: dict, plots: dict) -> str:
    from bench_realtext import markdown

    return "## What the default model learns of real text\n\n" + markdown([doc])


RENDER = {"realtext": render_realtext, "training": render_training, "erasure": render_erasure, "length": render_length, "dp": render_dp,
          "live": render_live,
          "scale": render_scale}


def _order(item: tuple[str, dict]) -> tuple[int, int, str]:
    """Sections in SECTIONS order; a section's variants (model size, text) next to each other,
    small before large, synthetic before real."""
    name, variant = split_key(item[0])
    size, _, text = variant.partition("/")
    sizes = ("", "small", "large", "model")
    return SECTIONS.index(name), sizes.index(size) if size in sizes else len(sizes), text


def _render_variant(key: str, sec: dict, plots: dict[str, str]) -> str:
    """A section's markdown; a variant's plots get their own files (``erasure_cost-large-real.svg``)."""
    name, variant = split_key(key)
    own: dict[str, str] = {}
    markdown = RENDER[name](sec, own)
    suffix = "-" + variant.replace("/", "-") if variant else ""
    for plot, svg in own.items():
        plots[plot + suffix] = svg
        markdown = markdown.replace(f"![{plot}](plots/{plot}.svg)", f"![{plot}{suffix}](plots/{plot}{suffix}.svg)")
    return markdown


def _titled(markdown: str, variant: str) -> str:
    """The section's heading with its variant (``large model, real text``) when not the reference one."""
    if not variant:
        return markdown
    size, _, text = variant.partition("/")
    first, _, rest = markdown.partition("\n")
    model = "the --model folder" if size == "model" else f"{size} model"
    return f"{first} ({model}, {text} text)\n{rest}"


def render(doc: dict, plots: dict[str, str]) -> str:
    m = doc["machine"]
    quick = [name for name, sec in doc["sections"].items() if sec.get("quick")]
    head = [
        "# Benchmark results", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, device {m['device']}"
        + (f" ({m['gpu']})" if m.get("gpu") else "") + f", model {m['model']}; Python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, peft {m['peft']}, flwr {m['flwr']}. Load average at start "
        f"{m['load_average_at_start']}, at end {m.get('load_average_at_end')} (a shared machine: other jobs ran too; "
        "wall times are upper bounds; each section states its own load average)." + (f" **Quick mode** (smoke-test sizes, not the real suite) in: {', '.join(quick)}."
                                   if quick else ""),
        "", "Reproduce: `fedunlearn bench` (or `.venv/bin/python benchmarks/run.py`); sections with `--only`.", ""]
    body = [_titled(_render_variant(key, sec, plots), split_key(key)[1])
            + f"\n\n_Section time: {sec['section_seconds']:.0f} s, finished {sec.get('when', '?')}, "
            f"load average {sec.get('load_average_start')} → {sec.get('load_average_end')}._\n"
            for key, sec in sorted(doc["sections"].items(), key=_order)]
    return "\n".join(head + body)


READING = "## Reading"


def kept_reading(path: Path) -> str:
    """The hand-written ``## Reading ...`` section at the end of an existing results file ("" if none).

    ``--merge`` keeps it: it is text people wrote about the numbers, which a rerun of some sections
    must not silently delete (it may need updating; the sections state when they ran).
    """
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8")
    at = text.find("\n" + READING)
    return text[at + 1:].rstrip("\n") + "\n" if at >= 0 else ""


def parse_points(text: str) -> tuple[tuple[int, float, int, int], ...]:
    """``"10:1.0:1:5,1000:0.01:1:3"`` -> ((orgs, fraction, shards, rounds), ...)."""
    points = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.split(":")
        if len(parts) != 4:
            raise SystemExit(f"--scale-points item {item!r}: expected ORGS:FRACTION:SHARDS:ROUNDS, e.g. 100:0.1:1:5")
        points.append((int(parts[0]), float(parts[1]), int(parts[2]), int(parts[3])))
    return tuple(points)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {list(SECTIONS)}")
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes (seconds per section on a tiny model)")
    ap.add_argument("--model", default="", help="local model folder (default: the embedded default)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--size", default="small", choices=("small", "large"),
                    help="size of the embedded default model (when --model is not given)")
    ap.add_argument("--text", default="synthetic", choices=("synthetic", "real"),
                    help="organizations' data: synthetic records or real text found on this machine")
    ap.add_argument("--grid", default="ray", choices=("ray", "local"), help="federation of the scale section")
    ap.add_argument("--scale-points", default="", help="ORGS:FRACTION:SHARDS:ROUNDS,... (default: 10, 100, 1000)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other sections of an existing OUT (its .json) and its hand-written "
                         "'## Reading' section; replace only the sections run now")
    ap.add_argument("--render", action="store_true",
                    help="measure nothing: rewrite OUT and its plots from OUT's .json (keeps '## Reading')")
    args = ap.parse_args(argv)
    previous = args.out.with_suffix(".json")
    if args.render:
        if not previous.is_file():
            raise SystemExit(f"--render: {previous} does not exist; run the benchmark first")
        doc = json.loads(previous.read_text(encoding="utf-8"))
        args.merge = False
        reading = kept_reading(args.out)
        return _write(args.out, doc, reading)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    old = json.loads(previous.read_text(encoding="utf-8")) if args.merge and previous.is_file() else None
    reading = kept_reading(args.out) if args.merge else ""

    def save(doc: dict) -> dict:  # after every section: a later failure or Ctrl-C keeps what was measured
        merged = {**doc, "sections": {**old["sections"], **doc["sections"]}} if old else doc
        return _write(args.out, merged, reading)

    with tempfile.TemporaryDirectory(prefix="fedunlearn-bench-") as tmp:
        opts = Options(quick=args.quick, model=args.model, device=args.device, grid=args.grid, work=Path(tmp),
                       scale_points=parse_points(args.scale_points), size=args.size, text=args.text)
        doc = run_sections(names, opts, on_section=save)
    return save(doc)


def _write(out: Path, doc: dict, reading: str) -> dict:
    """Write ``out`` (markdown, with ``reading`` appended), its plots and its ``.json``."""
    plots: dict[str, str] = {}
    text = render(doc, plots)
    if reading:
        text = text.rstrip("\n") + "\n\n" + reading
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "plots").mkdir(exist_ok=True)
    for name, svg in plots.items():
        (out.parent / "plots" / f"{name}.svg").write_text(svg, encoding="utf-8")
    for path, content in ((out.with_suffix(".json"), json.dumps(doc, indent=1, default=str)), (out, text)):
        tmp = path.with_name(f".{path.name}.tmp")  # a stop mid-write never leaves half a results file
        tmp.write_text(content, encoding="utf-8")
        tmp.replace(path)
    print(f"wrote {out}", flush=True)
    return doc


if __name__ == "__main__":
    from fedunlearn.interrupt import terminate_as_interrupt

    terminate_as_interrupt()  # SIGTERM unwinds like Ctrl-C: engines and workers are stopped, nothing half-written
    try:
        main()
    except KeyboardInterrupt:
        print("benchmark stopped; the results file is unchanged (it is written at the end)", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
