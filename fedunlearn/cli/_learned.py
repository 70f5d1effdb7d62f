"""What a run's served model learned: the demo's closing table.

Per organization: holdout loss of the base model and of the served model (nats per token), the
served model's bits per byte next to a uniform guess and a unigram model (fitted as the judge fits
it, :func:`fedunlearn.evaluate.informative.fit_unigram`), and the mean exposure of its inserted canaries next to the never-inserted level.
These are the conditions under which forgetting can be measured at all: a model that does not
beat the unigram baseline, or whose canaries sit at the never-inserted level, has nothing to forget.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LearnedRow", "learned_rows", "measure_learned", "print_learned"]


@dataclass(frozen=True)
class LearnedRow:
    """One organization's line of the table.

    Attributes
    ----------
    org : str
    base_loss, served_loss : float
        Mean holdout loss (nats per token) without adapter and with the served adapter.
    uniform_bpb, unigram_bpb, base_bpb, served_bpb : float
        Bits per byte on the holdout records.
    exposure : float
        Mean exposure (bits) of the organization's inserted canaries under the served model (NaN
        without canaries).
    never_mean, never_p95 : float
        Exposure of the never-inserted canaries (the chance level).
    """

    org: str
    base_loss: float
    served_loss: float
    uniform_bpb: float
    unigram_bpb: float
    base_bpb: float
    served_bpb: float
    exposure: float
    never_mean: float
    never_p95: float


def learned_rows(base_model, served_model, tokenizer, consortium, *, max_length: int,
                 never_inserted: int = 20) -> list[LearnedRow]:
    """Measure `served_model` against `base_model` on every organization of `consortium`."""
    import numpy as np

    from fedunlearn.evaluate.informative import fit_unigram, served_figures

    unigram = fit_unigram(consortium, tokenizer).model
    before = served_figures(base_model, consortium, tokenizer, unigram, max_length=max_length)
    after = served_figures(served_model, consortium, tokenizer, unigram, max_length=max_length, canaries=True,
                           never=consortium.never_inserted[:never_inserted])
    never = list(after.never_inserted)
    never_mean = float(np.mean(never)) if never else float("nan")
    never_p95 = float(np.percentile(never, 95)) if never else float("nan")
    rows = []
    for org, bpb in after.bits_per_byte.items():
        base = before.bits_per_byte[org]
        rows.append(LearnedRow(org, base.model_nats_per_token, bpb.model_nats_per_token, bpb.uniform, bpb.unigram,
                               base.model, bpb.model, after.exposure.get(org, float("nan")), never_mean, never_p95))
    return rows


def measure_learned(run_dir: Path, *, never_inserted: int = 20) -> list[LearnedRow]:
    """Measure the served model of a finished run (see :class:`LearnedRow`)."""
    from peft import PeftModel

    from fedunlearn.evaluate.runmodels import load_base, run_consortium
    from fedunlearn.runs import RunFolder

    run = RunFolder.open(run_dir)
    consortium = run_consortium(run)
    base = load_base(run)
    served = PeftModel.from_pretrained(copy.deepcopy(base.model), str(run.served_dir)).merge_and_unload()
    served.eval()
    return learned_rows(base.model, served, base.tokenizer, consortium, max_length=run.settings.data.max_length,
                        never_inserted=never_inserted)


def print_learned(run_dir: Path) -> list[LearnedRow]:
    """Measure (with a status line) and print the table; return its rows."""
    from rich.table import Table

    from fedunlearn.cli._app import console, err_console

    with err_console.status("measuring what the served model learned (holdout loss, bits per byte, canaries) ..."):
        rows = measure_learned(run_dir)
    table = Table(title="what the served model learned (holdout records; canaries under the served model)")
    for column in ("organization", "holdout loss base → served", "bits/byte uniform | unigram | base → served",
                   "canary exposure (bits)", "never-inserted mean | p95"):
        table.add_column(column)
    for r in rows:
        table.add_row(r.org, f"{r.base_loss:.3f} → {r.served_loss:.3f} ({r.served_loss - r.base_loss:+.3f})",
                      f"{r.uniform_bpb:.2f} | {r.unigram_bpb:.2f} | {r.base_bpb:.2f} → {r.served_bpb:.2f}",
                      f"{r.exposure:.1f}", f"{r.never_mean:.1f} | {r.never_p95:.1f}")
    console.print(table)
    return rows
