"""``fedunlearn report``: one self-contained HTML page from a run's evaluation results.

Plots are inline SVG written here (no plotting library needed, nothing fetched by the browser):
ROC curves of the loss MIA per model, canary exposure per model against the never-inserted
baseline, erasure cost against full retraining, utility per retained organization, what the models
learned of each organization (bits per byte against uniform and unigram baselines, with a warning
box when the forgetting figures are uninformative) and a summary of every certificate. Reads
``RUN_DIR/evaluation/*.json`` (written by ``fedunlearn evaluate``) and ``RUN_DIR/certificates/*.json``.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedunlearn.errors import RunStateError
from fedunlearn.progress import Reporter

__all__ = ["bar_chart", "line_chart", "render_report", "write_report"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
_W, _H, _PAD = 420, 300, 40


def line_chart(title: str, series: Sequence[tuple[str, Sequence[float], Sequence[float]]], *,
               diagonal: bool = False) -> str:
    """An SVG line chart on [0, 1]² (e.g. ROC curves): ``series`` = (label, xs, ys)."""
    sx = lambda x: _PAD + float(x) * (_W - 2 * _PAD)  # noqa: E731
    sy = lambda y: _H - _PAD - float(y) * (_H - 2 * _PAD)  # noqa: E731
    parts = [_frame(title, "FPR", "TPR")]
    if diagonal:
        parts.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(1)}" y2="{sy(1)}" stroke="#bbb" stroke-dasharray="4"/>')
    for i, (label, xs, ys) in enumerate(series):
        points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
        color = _COLORS[i % len(_COLORS)]
        parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        parts.append(f'<text x="{_W - _PAD - 150}" y="{_PAD + 14 * i}" font-size="11" fill="{color}">'
                     f'{html.escape(label)}</text>')
    return _svg(parts)


def bar_chart(title: str, labels: Sequence[str], groups: Sequence[tuple[str, Sequence[float]]], *,
              ylabel: str = "") -> str:
    """An SVG grouped bar chart: one group of bars per label, one bar per (name, values) series."""
    values = [v for _, vs in groups for v in vs if v is not None]
    top = max(values + [1e-9]) * 1.1
    n, k = max(len(labels), 1), max(len(groups), 1)
    slot = (_W - 2 * _PAD) / n
    width = slot * 0.8 / k
    parts = [_frame(title, "", ylabel)]
    for j, (name, vs) in enumerate(groups):
        color = _COLORS[j % len(_COLORS)]
        for i, v in enumerate(vs):
            if v is None:
                continue
            h = (float(v) / top) * (_H - 2 * _PAD)
            x = _PAD + i * slot + slot * 0.1 + j * width
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{_H - _PAD - h:.1f}" width="{width:.1f}" height="{h:.1f}" '
                         f'fill="{color}"><title>{html.escape(name)}: {float(v):.4g}</title></rect>')
        parts.append(f'<text x="{_W - _PAD - 150}" y="{_PAD + 14 * j}" font-size="11" fill="{color}">'
                     f'{html.escape(name)}</text>')
    for i, label in enumerate(labels):
        parts.append(f'<text x="{_PAD + (i + 0.5) * slot:.1f}" y="{_H - _PAD + 14}" font-size="10" '
                     f'text-anchor="middle">{html.escape(label)}</text>')
    parts.append(f'<text x="{_PAD - 4}" y="{_PAD}" font-size="10" text-anchor="end">{top:.3g}</text>')
    return _svg(parts)


def _frame(title: str, xlabel: str, ylabel: str) -> str:
    return (f'<rect x="0" y="0" width="{_W}" height="{_H}" fill="white"/>'
            f'<text x="{_W / 2}" y="16" font-size="13" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>'
            f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="black"/>'
            f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="black"/>'
            f'<text x="{_W / 2}" y="{_H - 8}" font-size="11" text-anchor="middle">{html.escape(xlabel)}</text>'
            f'<text x="12" y="{_H / 2}" font-size="11" transform="rotate(-90 12 {_H / 2})" '
            f'text-anchor="middle">{html.escape(ylabel)}</text>')


def _svg(parts: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{_W}" height="{_H}" '
            f'viewBox="0 0 {_W} {_H}">' + "".join(parts) + "</svg>")


def _evaluation_section(doc: dict[str, Any]) -> str:
    models = doc["models"]
    roc = line_chart(f"Loss MIA ROC: {doc['subject']} (members vs holdout)",
                     [(f"{m['name']} AUC {m['mia']['loss']['auc']:.3f}", m["mia"]["loss"]["roc"]["fpr"],
                       m["mia"]["loss"]["roc"]["tpr"]) for m in models if m["kind"] != "relearn"], diagonal=True)
    with_exp = [m for m in models if m.get("exposure")]
    exposure = bar_chart("Canary exposure (bits)", [m["name"] for m in with_exp], [
        ("inserted (mean)", [m["exposure"]["mean"] for m in with_exp]),
        ("never inserted (p95)", [m["exposure"]["baseline_p95"] for m in with_exp])], ylabel="bits")
    with_util = [m for m in models if m.get("utility")]
    orgs = sorted({o for m in with_util for o in m["utility"]["holdout"]})
    utility = bar_chart("Holdout loss per retained organization", orgs, [
        (m["name"], [m["utility"]["holdout"].get(o, {}).get("loss") for o in orgs]) for m in with_util],
        ylabel="nats/token")
    charts = [roc, exposure, utility]
    for e in doc["erasures"]:
        cost, full = e.get("cost") or {}, e.get("full_retrain_cost") or {}
        charts.append(bar_chart(f"Cost of {e['method']} vs full retraining", ["client-steps", "wall seconds"], [
            (e["method"], [cost.get("client_steps"), cost.get("wall_seconds")]),
            ("full retrain", [full.get("client_steps"), full.get("wall_seconds")])]))
    rows = "".join(
        f"<tr><td>{html.escape(m['name'])}</td><td>{m['mia']['loss']['auc']:.3f}</td>"
        f"<td>{m['mia']['min_k_plus_plus']['auc']:.3f}</td>"
        f"<td>{'-' if not m.get('exposure') else format(m['exposure']['mean'], '.2f')}</td>"
        f"<td>{'-' if m.get('kl_to_retrain') is None else format(m['kl_to_retrain'], '.4f')}</td></tr>"
        for m in models)
    spread = doc.get("retrain_spread") or {}
    bounds = "".join(
        f"<tr><td>{html.escape(m['name'])}</td><td>{m['epsilon_lower_bound']['epsilon']:.3f}</td>"
        f"<td>{html.escape(str(m['epsilon_lower_bound']['score']))}</td>"
        f"<td>{m['epsilon_lower_bound']['confidence']:g}</td><td>{_one_run_cell(m)}</td></tr>"
        for m in models if m.get("epsilon_lower_bound"))
    checks = "".join(
        f"<tr class='{'refuted' if c.get('consistent') is False else 'ok'}'><td>{html.escape(str(c.get('certificate')))}"
        f"</td><td>{html.escape(str(c.get('guarantee')))}</td><td>"
        f"{'REFUTED' if c.get('consistent') is False else ('-' if c.get('consistent') is None else 'consistent')}"
        f"</td><td>{html.escape(str(c.get('message')))}</td></tr>" for c in doc.get("certificate_checks", []))
    canaries = "".join(
        f"<tr class='{'refuted' if c.get('consistent') is False else 'ok'}'><td>{html.escape(m['name'])}</td>"
        f"<td>{c['epsilon']:.3f}</td><td>{c['correct']}/{c['guesses']} of {c['canaries']} ({c['included']} in)</td>"
        f"<td>{'-' if c.get('epsilon_accounted') is None else format(c['epsilon_accounted'], '.3f')}</td><td>"
        f"{'REFUTED' if c.get('consistent') is False else ('-' if c.get('consistent') is None else 'consistent')}"
        f"</td></tr>" for m in models if (c := m.get("epsilon_lower_bound_canary_orgs")))
    if canaries:
        canaries = ("<h3>Client-level audit: canary organizations (one run, cosine to each canary's direction; "
                    "a research run, canaries perturb the model)</h3><table><tr><th>model</th><th>ε ≥</th>"
                    "<th>right/guesses</th><th>accountant ε (an organization in every round)</th><th>check</th>"
                    "</tr>" + canaries + "</table>")
    privacy = ("<h3>Empirical privacy: ε lower bounds (Clopper-Pearson on the MIA guesses; one-run on the "
               "audit canaries, Steinke et al. 2023)</h3>"
               "<table><tr><th>model</th><th>ε ≥</th><th>score</th><th>confidence</th>"
               "<th>one-run ε ≥ (right/guesses of m)</th></tr>" + bounds + "</table>"
               + ("<table><tr><th>certificate</th><th>guarantee</th><th>check</th><th>detail</th></tr>" + checks
                  + "</table>" if checks else "<p>No certificate of these erasures claims an ε to check.</p>")
               + canaries)
    return (f"<h2>Erasure of {html.escape(doc['subject'])}</h2>{_learned_section(doc)}"
            f"<div class='plots'>{''.join(charts)}</div>"
            "<table><tr><th>model</th><th>loss AUC</th><th>Min-K%++ AUC</th><th>exposure</th><th>KL to retrain</th>"
            f"</tr>{rows}</table><p>Retrain spread (KL between seeds): mean {spread.get('mean')}, max "
            f"{spread.get('max')}.</p>{privacy}")


_BEFORE = {"model": "rebuilt from the ledger and measured",
           "captured": "purged; its figures were captured at erasure time",
           "unavailable": "purged and not captured with these figures: no verdict"}


def _learned_section(doc: dict[str, Any]) -> str:
    """The verdict on the forgetting figures (a warning box unless informative) and the "learned" table."""
    learned, verdict = doc.get("learned"), doc.get("forgetting_verdict")
    if not learned:
        return ""
    box = ""
    if verdict:
        kind = {True: "uninformative", False: "informative"}.get(verdict.get("uninformative"), "unknown")
        box = (f"<div class='verdict {kind}'><strong>{'Warning: ' if kind != 'informative' else ''}"
               f"{html.escape(str(verdict.get('reason')))}</strong><br><small>Rule: "
               f"{html.escape(str(verdict.get('rule')))}.</small></div>")
    models = list(dict.fromkeys(k for o in learned["organizations"] for k in o["bits_per_byte"]))
    cell = lambda v: "-" if v is None else f"{float(v):.3f}"  # noqa: E731
    rows = "".join(
        ("<tr class='subject'>" if o["subject"] else "<tr>")
        + f"<td>{html.escape(o['organization'])}{' (erased)' if o['subject'] else ''}</td><td>{o['texts']}</td>"
        + "".join(f"<td>{cell(o['bits_per_byte'].get(m))}</td>" for m in models)
        + f"<td>{cell(o.get('exposure_before')) if o['canaries'] else '- (no canaries)'}</td></tr>"
        for o in learned["organizations"])
    never = learned.get("never_inserted_before")
    fit = "public documents" if learned.get("unigram_fit") == "public" else "organizations' training records"
    return (f"{box}<h3>What the model learned</h3><p>Bits per byte on each organization's holdout (lower is better; "
            f"tokenizer-independent). The unigram baseline is fitted on {learned.get('unigram_documents')} {fit}; "
            f"the model served before the erasure was {_BEFORE.get(learned.get('before'), 'not measured')}. Canary "
            "exposure before the erasure, mean of the organization's inserted canaries"
            + (f", against never-inserted canaries: mean {never['mean']:.2f}, p95 {never['p95']:.2f} bits "
               f"({never['canaries']} canaries; a secret ranked by chance: p95 {never['chance_p95']:.2f} bits)."
               if never else " (no never-inserted canary was scored on that model: the threshold is that of a secret "
               "ranked by chance).")
            + "</p><table class='learned'><tr><th>organization</th><th>holdout records</th>"
            + "".join(f"<th>{html.escape(m)}</th>" for m in models)
            + f"<th>canary exposure before (bits)</th></tr>{rows}</table>")


def _certificate_section(run_dir: Path) -> str:
    rows = []
    for path in sorted((run_dir / "certificates").glob("*.json")):
        body = json.loads(path.read_text(encoding="utf-8"))["certificate"]
        g = body.get("guarantee", {})
        rows.append(f"<tr><td>{html.escape(path.name)}</td><td>{html.escape(str(body.get('method')))}</td>"
                    f"<td>{html.escape(str(g.get('kind')))}</td><td>{html.escape(str(body.get('issued')))}</td>"
                    f"<td>{'yes' if body.get('evaluation') else 'no'}</td>"
                    f"<td>{html.escape(str(body.get('supersedes', ''))[:16])}</td></tr>")
    if not rows:
        return "<h2>Certificates</h2><p>No certificate issued in this run.</p>"
    return ("<h2>Certificates</h2><table><tr><th>file</th><th>method</th><th>guarantee</th><th>issued</th>"
            "<th>evaluation</th><th>supersedes</th></tr>" + "".join(rows) + "</table>")


def render_report(run_dir: str | Path, *, reporter: Reporter | None = None) -> str:
    """The report of ``run_dir`` as one HTML string.

    ``reporter`` shows progress: one step per evaluation file, one for the certificates (each is
    verified).

    Raises
    ------
    RunStateError
        If the run has no ``evaluation/*.json``.
    """
    run_dir = Path(run_dir)
    reporter = reporter or Reporter()
    docs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((run_dir / "evaluation").glob("*.json"))]
    docs = [d for d in docs if isinstance(d, dict) and d.get("format") == "fedunlearn-evaluation/1"]
    if not docs:
        raise RunStateError(f"run {str(run_dir)!r} has no evaluation results in evaluation/*.json; run "
                            f"`fedunlearn evaluate --run {run_dir} --org NAME` first")
    sections = []
    with reporter.task("report", total=len(docs) + 1) as advance:
        for doc in docs:
            sections.append(_evaluation_section(doc))
            advance(1, note=f"erasure of {doc.get('subject', '?')}")
        sections.append(_certificate_section(run_dir))
        advance(1, note="certificates verified")
    body = "".join(sections)
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px}tr.refuted td{background:#fdd;font-weight:bold}.plots svg{margin:6px;border:1px solid #eee}"
             ".verdict{padding:8px 12px;margin:1em 0;border:2px solid}.verdict.uninformative,.verdict.unknown"
             "{background:#fff3cd;border-color:#e0a800}.verdict.informative{background:#e8f5e9;border-color:#9c9}"
             "tr.subject td{font-weight:bold}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>fedunlearn report</title>"
            f"<style>{style}</style></head><body><h1>fedunlearn evaluation report</h1>"
            f"<p>Run: {html.escape(str(run_dir))}</p>{body}</body></html>")


def write_report(run_dir: str | Path, out: str | Path, *, reporter: Reporter | None = None) -> Path:
    """Write :func:`render_report` to ``out`` (atomically: a stopped report leaves no half page); return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(run_dir, reporter=reporter)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def _one_run_cell(m: dict) -> str:
    r = m.get("epsilon_lower_bound_one_run")
    if not r:
        return "- (no audit canaries)"
    return f"{r['epsilon']:.3f} ({r['correct']}/{r['guesses']} of {r['canaries']})"
