"""The models an evaluation compares, rebuilt from a run folder: served before/after, retrains, base.

Every served model the run ever had is in the ledger (``served`` history: component checkpoints and
their ΔW weights). One whose aggregates were purged on an exact erasure (they depended on the
erased organization) cannot be rebuilt: its metrics were captured at erasure time instead
(:mod:`~fedunlearn.evaluate.before`). A model is evaluated **merged**: ``W + Σ_s w_s ΔW_s`` written into
a copy of the frozen base, a plain causal LM (no LoRA layers: faster, and what a weight-quantization
attacker would hold).

Retrain references are trained here, in process and without Flower: for each seed, every shard
from a fresh round-0 adapter, every round, with the remaining members in the original order and
FedAvg weights — the arithmetic of ``retrain``. Seed ``run.seed`` reproduces ``retrain`` itself
(the same derived seeds); other seeds change LoRA initialization and batch order, which is the
noise fidelity is measured against. Their adapters are cached under ``RUN_DIR/evaluation/retrain/``,
and trained in a second process while the evaluation goes on (:func:`start_retrains`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fedunlearn.data import Consortium, OrganizationData, load_consortium
from fedunlearn.errors import DataError, RunStateError
from fedunlearn.config import is_canary
from fedunlearn.training.canaries import canary_data, canary_train_config, run_canary_key
from fedunlearn.federation.topology import derive_seed
from fedunlearn.ledger import Ledger
from fedunlearn.models import (
    BaseModel,
    average_states,
    delta_weights,
    get_lora_state,
    load_base_model,
    pick_device,
    set_cpu_threads,
    wrap_lora,
)
from fedunlearn.runs import RunFolder
from fedunlearn.data.generated import synthetic_consortium
from fedunlearn.training.client import OrganizationClient, lora_spec

__all__ = [
    "ServedState",
    "finish_retrains",
    "load_base",
    "merged_model",
    "retrain_reference",
    "run_consortium",
    "served_history",
    "start_retrains",
]

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
    history: dict[str, ServedState] = {}
    for row in ledger.served_history():
        if row["purged"]:
            history.pop(row["served_hash"], None)
            continue
        states = tuple(ledger.get_state(ledger.checkpoint(i).hash) for i in row["components"])
        history[row["served_hash"]] = ServedState(row["served_hash"], states, tuple(float(w) for w in row["weights"]))
    return history


def load_base(run: RunFolder) -> BaseModel:
    """The run's frozen base model on the CPU, with the run's CPU thread policy.

    ``model.threads`` = 0 (auto) means one intra-op thread for a small model: on a shared 2-core
    machine two threads per process spin against each other and made retraining and exposure
    scoring 6-9x slower (measured on the demo run under a load average of 8-12).
    """
    base = load_base_model(run.base_model, device=pick_device("cpu"))
    set_cpu_threads(base.model, run.settings.model.threads)
    return base


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
    """The run's consortium: ``RUN_DIR/data`` when a simulation saved it, the saved consortium that
    ``data.dir`` names (e.g. ``fedunlearn data real-text``), else regenerated (synthetic).

    The records of an organization erased from a simulation were removed from ``RUN_DIR/data``
    (:mod:`fedunlearn.data.removal`): they are regenerated from the run's scenario and accepted only
    if they hash to the fingerprint the run's ledger keeps (bound to its audit log).

    Raises
    ------
    DataError
        If the run trained on organizations' own data and no consortium folder was saved.
    """
    folder = run.path / "data"
    if (folder / "manifest.json").is_file():
        consortium = load_consortium(folder)
        if set(consortium.names) >= set(run.settings.organization_names):
            return consortium
        from fedunlearn.data.removal import restore_organizations

        with Ledger.open(run.path) as ledger:
            meta = ledger.meta  # one read of the table (it holds a row per stored update too)
        prints = {n: meta.get(f"data-sha256/{n}", "") for n in run.settings.organization_names}
        return restore_organizations(consortium, list(run.settings.organization_names),
                                     lambda: synthetic_consortium(run.settings), prints)
    s = run.settings
    if s.data.dir and (Path(s.data.dir) / "manifest.json").is_file() and not any(o.data for o in s.organizations):
        return load_consortium(Path(s.data.dir))
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
            data: OrganizationData = canary_data(name) if is_canary(name) else consortium.organization(name)
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
            for org in members:  # canary organizations (client-level audit) add their keyed update, as in the run
                canary = canary_train_config(run_canary_key(run.path), org, run.settings) if is_canary(org) else None
                new, fit = client(org).train(state, seed=derive_seed(seed, "train", shard, rnd, org), canary=canary)
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


def _retrain_worker(run_dir: str, subjects: tuple[str, ...], seeds: list[int]) -> None:
    """Child process: train and cache the retrain references of ``seeds`` (see :func:`start_retrains`)."""
    run = RunFolder.open(Path(run_dir))
    consortium = run_consortium(run)
    base = load_base(run)
    with Ledger.open(run.path) as ledger:
        for seed in seeds:
            retrain_reference(run, ledger, consortium, subjects, seed, base=base)


def start_retrains(run: RunFolder, subjects: Sequence[str], seeds: Sequence[int]) -> Any:
    """Start training the uncached retrain references in a second process; None if not worth it.

    A process (not a thread: one intra-op thread per process is fastest for small models on a
    shared CPU) is started only when the machine has at least 2 cores and some seed is not cached.
    :func:`finish_retrains` waits for it and loads the results.
    """
    missing = [s for s in seeds if not _cache_file(run, subjects, s).is_file()]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not missing or cores < 2:
        return None
    process = multiprocessing.get_context("spawn").Process(
        target=_retrain_worker, args=(str(run.path), tuple(subjects), missing), daemon=True)
    process.start()
    return process


def finish_retrains(worker: Any, run: RunFolder, subjects: Sequence[str], seeds: Sequence[int],
                    consortium: Consortium, base: BaseModel) -> list[ServedState]:
    """The retrain references of ``seeds``: those ``worker`` cached, the rest trained here.

    A failed worker only costs time: whatever it did not cache is trained in this process.
    """
    if worker is not None:
        worker.join()
    with Ledger.open(run.path) as ledger:
        return [retrain_reference(run, ledger, consortium, subjects, s, base=base) for s in seeds]
