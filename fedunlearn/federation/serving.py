"""The served model: shard adapters combined exactly in ΔW space, exported as PEFT folders.

Shard s has adapter (A_s, B_s) and weight w_s = (examples of its current members) / (all examples).
The served adapter concatenates the factors, A = [A_1; ...; A_S], B = [w_1 B_1, ..., w_S B_S], with
rank S·r and alpha S·alpha, so that its ΔW = Σ_s w_s ΔW_s exactly (peft's "cat" combination).
Shards with no trained contribution (weight 0) are left out.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from fedunlearn.errors import RunStateError
from fedunlearn.ledger import Ledger
from fedunlearn.models import ADAPTER_WEIGHTS_FILE, combine_exact, export_adapter, export_combined, state_sha256
from fedunlearn.runs import RunFolder
from fedunlearn.training.client import lora_spec

__all__ = ["ServedModel", "export_served", "shard_weights"]


@dataclass(frozen=True)
class ServedModel:
    """What was exported."""

    path: Path
    hash: str  # sha256 of the combined adapter state
    components: dict[int, int]  # shard -> checkpoint id
    weights: dict[int, float]  # shard -> weight in the ΔW combination
    shard_paths: dict[int, Path]


def shard_weights(ledger: Ledger, shards: int) -> dict[int, float]:
    """Each shard's share of the training examples of its latest contributing round."""
    sizes: dict[int, float] = {}
    for shard in range(shards):
        size = 0
        for ckpt in reversed(ledger.chain(shard)):
            contributions = ledger.contributions(ckpt.id)
            if contributions:
                size = sum(c.num_examples for c in contributions)
                break
        sizes[shard] = float(size)
    total = sum(sizes.values())
    if total <= 0:
        raise RunStateError("no shard has a trained adapter yet: train at least one round before exporting")
    return {s: v / total for s, v in sizes.items() if v > 0}


def export_served(run: RunFolder, ledger: Ledger) -> ServedModel:
    """Export every shard's head and the combined served adapter; record it in the ledger."""
    shards = run.settings.topology.shards
    spec = lora_spec(run.settings)
    weights = shard_weights(ledger, shards)
    heads = {s: ledger.head(s) for s in weights}
    states = {s: ledger.get_state(h.hash) for s, h in heads.items()}
    shard_paths = {}
    for s, state in states.items():
        if _holds(run.shard_dir(s), heads[s].hash):  # unchanged since the last export (e.g. after an erasure)
            shard_paths[s] = run.shard_dir(s)
            continue
        shard_paths[s] = export_adapter(run.shard_dir(s), state, base_model_path=run.base_model, spec=spec)
    for s in range(shards):  # a shard no longer served (all its members erased) leaves no adapter behind
        if s not in states and run.shard_dir(s).exists():
            shutil.rmtree(run.shard_dir(s))
    order = sorted(states)
    combined = combine_exact([states[s] for s in order], [weights[s] for s in order])
    digest = state_sha256(combined)
    path = export_combined(run.served_dir, [states[s] for s in order], [weights[s] for s in order],
                           base_model_path=run.base_model, spec=spec)
    manifest = {  # no timestamp: the same served model gives the same bytes (the ledger and log keep the time)
        "served_hash": digest,
        "combine": run.settings.topology.combine,
        "components": [{"shard": s, "checkpoint": heads[s].id, "round": heads[s].round,
                        "hash": heads[s].hash, "weight": str(weights[s])} for s in order],
    }
    (path / "fedunlearn.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    ledger.record_served(served_hash=digest, components=[heads[s].id for s in order],
                         weights=[weights[s] for s in order], path=str(path))
    return ServedModel(path=path, hash=digest, components={s: heads[s].id for s in order}, weights=weights,
                       shard_paths=shard_paths)


def _holds(folder: Path, digest: str) -> bool:
    """Whether ``folder`` is an exported adapter whose weights hash to ``digest``."""
    weights = folder / ADAPTER_WEIGHTS_FILE
    return weights.is_file() and state_sha256(load_file(str(weights))) == digest


def copy_served(run: RunFolder, out: Path) -> Path:
    """Copy the exported served adapter folder to ``out`` (refuses to overwrite a non-empty folder)
    and log the copy (``export-copy``: destination, served hash, each file's SHA-256).

    The copy is logged only when every file hashes to the last logged export; otherwise (or when
    the log cannot be written) ``out`` is removed again and the error says why.
    """
    from fedunlearn.certify.runaudit import RunAudit, file_sha256
    from fedunlearn.errors import IntegrityError

    src = run.served_dir
    if not (src / "adapter_config.json").is_file():
        raise RunStateError(f"run {str(run.path)!r} has no exported served model yet: train it first")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RunStateError(f"{str(out)!r} exists and is not empty: choose an empty or new folder")
    existed = out.exists()
    with RunAudit.open(run.path) as audit:  # first: a run whose log cannot be written gets no copy
        exports = audit.events("export")
        if not exports:
            raise RunStateError(f"run {str(run.path)!r} logs no export of its served model: train it first")
        export = exports[-1][1]
        want = {rel.removeprefix("export/served/"): h for rel, h in export.get("files", {}).items()
                if rel.startswith("export/served/")}
        try:
            shutil.copytree(src, out, dirs_exist_ok=True)
            have = {p.relative_to(out).as_posix(): file_sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
            if have != want:
                raise IntegrityError(
                    f"the served adapter in {str(src)!r} is not the one the log records as exported "
                    f"(files {sorted(set(have) ^ set(want)) or sorted(k for k in have if have[k] != want.get(k))}); "
                    f"nothing was copied: run `fedunlearn verify --run {run.path}`")
            audit.log_export_copy(str(export.get("served_hash", "")), out)  # `verify --export` names this copy
            audit.checkpoint()
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            if existed:
                out.mkdir(exist_ok=True)
            raise
    return out
