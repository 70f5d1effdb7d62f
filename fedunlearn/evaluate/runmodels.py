"""The models an evaluation compares, rebuilt from a run folder: served before/after, retrains, base.

Every served model the run ever had is in the ledger (``served`` history: component checkpoints and
their ΔW weights); aggregate blobs are never encrypted or shredded, so a model served before an
erasure can be rebuilt after it. A model is evaluated **merged**: ``W + Σ_s w_s ΔW_s`` written into
a copy of the frozen base, a plain causal LM (no LoRA layers: faster, and what a weight-quantization
attacker would hold).

Retrain references are trained here, in process and without Flower: for each seed, every shard
from a fresh round-0 adapter, every round, with the remaining members in the original order and
FedAvg weights — the arithmetic of ``retrain``. Seed ``run.seed`` reproduces ``retrain`` itself
(the same derived seeds); other seeds change LoRA initialization and batch order, which is the
noise fidelity is measured against. Their adapters are cached under ``RUN_DIR/evaluation/retrain/``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fedunlearn.data import Consortium, OrganizationData, load_consortium
from fedunlearn.errors import DataError, RunStateError
from fedunlearn.federation.topology import derive_seed
from fedunlearn.ledger import Ledger
from fedunlearn.models import (
    BaseModel,
    average_states,
    delta_weights,
    get_lora_state,
    load_base_model,
    pick_device,
    wrap_lora,
)
from fedunlearn.runs import RunFolder
from fedunlearn.training.client import OrganizationClient, lora_spec, synthetic_consortium

__all__ = ["ServedState", "load_base", "merged_model", "retrain_reference", "run_consortium", "served_history"]

_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class ServedState:
    """One served model of the run: shard adapter states and their ΔW weights.

    Attributes
    ----------
    served_hash : str
    states : tuple of dict
        One LoRA state per component (rank ``r`` each).
    weights : tuple of float
    """

    served_hash: str
    states: tuple[dict[str, torch.Tensor], ...]
    weights: tuple[float, ...]


def served_history(ledger: Ledger) -> dict[str, ServedState]:
    """Every served model recorded in ``ledger`` that can still be rebuilt, by served hash.

    A model whose components were purged when an organization it depends on was erased (store
    privacy, see :meth:`fedunlearn.ledger.Ledger.purge_dependents`) is left out: by design it can
    no longer be rebuilt. The latest record of a hash wins.
    """
    rows = ledger._query("SELECT served_hash, components, weights FROM served ORDER BY id")  # noqa: SLF001
    purged = _purged_ids(ledger)
    history: dict[str, ServedState] = {}
    for row in rows:
        ids, weights = json.loads(row["components"]), json.loads(row["weights"])
        if any(i in purged for i in ids):
            history.pop(row["served_hash"], None)
            continue
        states = tuple(ledger.get_state(ledger.checkpoint(i).hash) for i in ids)
        history[row["served_hash"]] = ServedState(row["served_hash"], states, tuple(float(w) for w in weights))
    return history


def _purged_ids(ledger: Ledger) -> set[int]:
    rows = ledger._query("SELECT checkpoint_id FROM purged")  # noqa: SLF001
    return {int(r["checkpoint_id"]) for r in rows}


def load_base(run: RunFolder) -> BaseModel:
    """The run's frozen base model on the CPU."""
    return load_base_model(run.base_model, device=pick_device("cpu"))


def merged_model(base: BaseModel, states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float],
                 scaling: float) -> nn.Module:
    """A copy of ``base.model`` with ``Σ_i weights[i] · ΔW(states[i])`` added to its weights.

    Parameters
    ----------
    base : BaseModel
    states, weights
        LoRA states (canonical keys, see :func:`~fedunlearn.models.get_lora_state`) and their weights;
        both empty: the base model itself (a copy).
    scaling : float
        ``alpha / r`` of the states.

    Returns
    -------
    torch.nn.Module
        In eval mode, no parameter requiring grad.
    """
    model = copy.deepcopy(base.model)
    with torch.no_grad():
        for state, w in zip(states, weights):
            for prefix, delta in delta_weights(state, scaling).items():
                name = prefix[len(_PEFT_PREFIX):] if prefix.startswith(_PEFT_PREFIX) else prefix
                weight = model.get_submodule(name).weight  # [out, in]
                weight.add_((float(w) * delta).to(weight.dtype))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run_consortium(run: RunFolder) -> Consortium:
    """The run's consortium: ``RUN_DIR/data`` when a simulation saved it, else regenerated (synthetic).

    Raises
    ------
    DataError
        If the run trained on organizations' own data and no consortium folder was saved.
    """
    folder = run.path / "data"
    if (folder / "manifest.json").is_file():
        return load_consortium(folder)
    s = run.settings
    if s.data.dir or any(o.data for o in s.organizations):
        raise DataError(
            f"run {str(run.path)!r} trained on organizations' own data and holds no consortium in "
            f"{str(folder)!r}; expected a synthetic run (simulations save RUN_DIR/data): evaluate a "
            "simulated run, or save the organizations' data there with fedunlearn.data.save_consortium"
        )
    return synthetic_consortium(s)


def _cache_file(run: RunFolder, subjects: Sequence[str], seed: int) -> Path:
    key = hashlib.sha256(json.dumps(sorted(subjects)).encode()).hexdigest()[:12]
    return run.path / "evaluation" / "retrain" / f"{key}-seed-{seed}.safetensors"


def retrain_reference(run: RunFolder, ledger: Ledger, consortium: Consortium, subjects: Sequence[str],
                      seed: int, *, base: BaseModel | None = None) -> ServedState:
    """The served model of the run retrained from scratch without ``subjects`` with training seed ``seed``.

    Rounds and membership come from the ledger (who was a member of which shard in which round,
    late joiners included); organizations' data from ``consortium``. Cached per (subjects, seed).

    Raises
    ------
    RunStateError
        If nobody remains to train.
    """
    path = _cache_file(run, subjects, seed)
    shards = run.settings.topology.shards
    if path.is_file():
        flat = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        states = tuple({k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(f"{s}/")}
                       for s in meta["shards"])
        return ServedState(f"retrain-seed-{seed}", states, tuple(meta["weights"]))
    base = base or load_base(run)
    spec = lora_spec(run.settings)
    clients: dict[str, OrganizationClient] = {}

    def client(name: str) -> OrganizationClient:
        if name not in clients:
            data: OrganizationData = consortium.organization(name)
            c = OrganizationClient(settings=run.settings, name=name, data=data)
            c.__dict__["base"] = base  # cached_property: share the loaded base, no second load
            clients[name] = c
        return clients[name]

    states, sizes, used = [], [], []
    for shard in range(shards):
        chain = ledger.chain(shard)
        init = wrap_lora(base, spec, seed=derive_seed(seed, "init", shard))
        state, size = get_lora_state(init), 0
        del init
        for rnd in range(1, chain[-1].round + 1):
            members = [m for m in ledger.members(shard, rnd) if m not in subjects]
            if not members:
                continue
            updates, counts = [], []
            for org in members:
                new, fit = client(org).train(state, seed=derive_seed(seed, "train", shard, rnd, org))
                updates.append(new)
                counts.append(float(fit.num_examples))
            state, size = average_states(updates, counts), int(sum(counts))
        if size:
            states.append(state)
            sizes.append(size)
            used.append(shard)
    if not states:
        raise RunStateError(f"no organization remains to retrain once {list(subjects)} are left out")
    weights = tuple(s / sum(sizes) for s in sizes)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{s}/{k}": v for s, st in zip(used, states) for k, v in st.items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"shards": used, "weights": list(weights)}), encoding="utf-8")
    return ServedState(f"retrain-seed-{seed}", tuple(states), weights)
