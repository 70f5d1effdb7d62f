"""An organization's side of the federation: who it is, its data, and the work a message asks for.

The Flower ClientApp (``clients/app.py``) is a thin layer over :class:`OrganizationClient`; unit
tests use this class directly. Nothing here keeps per-node mutable state in module globals: the
caches below hold read-only objects keyed by everything that determines them (a Ray actor may host
several simulated organizations).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fedunlearn.config import Settings, is_canary
from fedunlearn.data import OrganizationData, load_organization, load_user_organization
from fedunlearn.data.generated import synthetic_consortium
from fedunlearn.errors import ConfigError, DataError
from fedunlearn.models import (
    BaseModel,
    LoraSpec,
    get_lora_state,
    load_base_model,
    pick_device,
    set_lora_state,
)
from fedunlearn.training import modelpool
from fedunlearn.training.local import (
    EncodedData,
    EvalResult,
    FitResult,
    encode_texts,
    evaluate_local,
    fit_local,
    set_cpu_threads,
)

__all__ = ["OrganizationClient", "RecordSplit", "lora_spec", "organization_data", "organization_name"]


@dataclass(frozen=True)
class RecordSplit:
    """An organization's training records split by a forget request (record ids matched)."""

    forget: EncodedData
    retain: EncodedData | None
    forget_ids: tuple[str, ...]


def lora_spec(settings: Settings) -> LoraSpec:
    """The peft LoRA shape the settings ask for."""
    return LoraSpec(
        r=settings.lora.r,
        alpha=settings.lora.alpha,
        dropout=settings.lora.dropout,
        target_modules=settings.lora.modules,
    )


def organization_name(settings: Settings, node_config: Mapping[str, object]) -> str:
    """The stable organization name of this node.

    Deployment: the SuperNode's ``--node-config 'org="name"'``. Simulation: the scenario's
    organization list indexed by Flower's ``partition-id``. Never Flower's random node id.
    """
    if "org" in node_config:
        name = str(node_config["org"])
        if name not in settings.organization_names and name not in settings.canary_organizations:
            raise ConfigError(
                f"this node is configured as organization {name!r}, which is not in the run's "
                f"organizations {settings.organization_names}; fix the SuperNode's --node-config or the run config"
            )
        return name
    if "partition-id" in node_config:
        pid = int(node_config["partition-id"])  # type: ignore[arg-type]
        names = settings.organization_names + settings.canary_organizations  # canaries: the last nodes
        if not 0 <= pid < len(names):
            raise ConfigError(
                f"simulated node has partition-id {pid} but the run has {len(names)} organizations (canaries "
                f"included); start the simulation with num-supernodes = {len(names)}"
            )
        return names[pid]
    raise ConfigError(
        "this node has no organization identity: start the SuperNode with --node-config 'org=\"NAME\"'"
    )


def organization_data(settings: Settings, name: str, node_config: Mapping[str, object] | None = None) -> OrganizationData:
    """Load (or generate) one organization's records and holdout.

    Order of precedence: the node's ``data`` node-config entry (deployment), the organization's
    ``data`` field in the scenario, ``data.dir/<name>`` (a saved consortium), else the synthetic
    consortium generated from ``run.seed`` (deterministic, so every node agrees).
    """
    node_config = node_config or {}
    if is_canary(name):  # a canary organization of the client-level audit holds no data
        from fedunlearn.training.canaries import canary_data

        return canary_data(name)
    explicit = str(node_config.get("data", "") or settings.organization(name).data or "")
    if explicit:
        path = Path(explicit)
        if (path / "train.jsonl").is_file():
            return load_organization(path, name)
        return load_user_organization(path, name, seed=settings.run.seed)
    if settings.data.dir:
        folder = Path(settings.data.dir) / name
        if not folder.is_dir():
            raise DataError(
                f"organization {name!r} has no data folder {str(folder)!r} under data.dir; "
                "expected one sub-folder per organization"
            )
        return load_organization(folder, name)
    return synthetic_consortium(settings).organization(name)


@functools.lru_cache(maxsize=2)
def _base(path: str, device: str, threads: int) -> BaseModel:
    base = load_base_model(path or None, device=pick_device(device))
    if base.device.device.type == "cpu":
        set_cpu_threads(base.model, threads)
    return base


@dataclass
class OrganizationClient:
    """One organization's local work on the frozen base model plus a LoRA adapter."""

    settings: Settings
    name: str
    data: OrganizationData

    @classmethod
    def from_node(cls, settings: Settings, node_config: Mapping[str, object]) -> OrganizationClient:
        name = organization_name(settings, node_config)
        return cls(settings=settings, name=name, data=organization_data(settings, name, node_config))

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of this organization's records (ids and texts, train and holdout).

        Sent when the server identifies the node, so that a resumed run or an erasure that
        retrains is refused when an organization's data is not the data it trained on.
        """
        return self.data.fingerprint()

    @functools.cached_property
    def base(self) -> BaseModel:
        return _base(self.settings.model.path, self.settings.model.device, self.settings.model.threads)

    @functools.cached_property
    def train_data(self) -> EncodedData:
        return encode_texts(self.base.tokenizer, self.data.texts("train"), max_length=self.settings.data.max_length)

    @functools.cached_property
    def holdout_data(self) -> EncodedData:
        texts = self.data.texts("holdout")
        if not texts:
            raise DataError(f"organization {self.name!r} has no holdout records to evaluate on")
        return encode_texts(self.base.tokenizer, texts, max_length=self.settings.data.max_length)

    def model_with(self, state: Mapping[str, torch.Tensor]):
        """A fresh copy of the base model wrapped with LoRA and loaded with ``state`` (the caller's own)."""
        model = modelpool.build(self.base, lora_spec(self.settings))
        set_lora_state(model, state)
        return model

    def borrowed(self, state: Mapping[str, torch.Tensor]):
        """A context manager lending a pooled LoRA model loaded with ``state`` (:mod:`~fedunlearn.training.modelpool`).

        What the message handlers use: the model is built once per process, not once per message.
        """
        m = self.settings.model
        spec = lora_spec(self.settings)
        return modelpool.borrow((m.path, m.device, m.threads, spec), self.base, spec, state)

    def train(self, state: Mapping[str, torch.Tensor], *, seed: int, epochs: int | None = None,
              lr: float | None = None, batch_size: int | None = None,
              exclude: Sequence[str] = (),
              dp_history: Sequence[tuple[float, float, int]] = (),
              canary: Mapping[str, object] | None = None) -> tuple[dict[str, torch.Tensor], FitResult]:
        """Fit the adapter on this organization's training records; return the new state.

        ``exclude``: record ids left out: records the organization forgot (the server sends them with
        every later round) or a record-level erasure by retraining (see :meth:`split_records`).
        ``dp_history``: this organization's earlier DP-SGD rounds (z, q, steps); with ``dp.max-epsilon``
        the round is refused (:class:`~fedunlearn.training.dp.PrivacyBudgetError`, before any step)
        when it would take their cumulative ε over the budget.
        ``canary``: a canary organization's train instructions (:mod:`fedunlearn.training.canaries`);
        it trains nothing and returns the sent state plus its keyed update.
        """
        if is_canary(self.name):
            from fedunlearn.training.canaries import canary_fit

            return canary_fit(state, canary or {}, examples=self.settings.data.records_per_org)
        t = self.settings.train
        train_data = self.records(exclude)
        if self.settings.dp.record_level:  # DP-SGD: secret sampling and noise (see training.dp)
            from fedunlearn.training.dp import fit_local_dp

            model = self.model_with(state)  # a fresh model: Opacus hooks never touch a pooled one
            result: FitResult = fit_local_dp(
                model, train_data,
                epochs=epochs or t.local_epochs, batch_size=batch_size or t.batch_size, lr=lr or t.lr,
                seed=seed, weight_decay=t.weight_decay, noise_multiplier=self.settings.dp.noise_multiplier,
                max_grad_norm=self.settings.dp.max_grad_norm,
                max_epsilon=self.settings.dp.max_epsilon, delta=self.settings.dp.delta,  # refuse before training
                history=dp_history,
            )
            return get_lora_state(model), result
        with self.borrowed(state) as model:
            result = fit_local(
                model, train_data,
                epochs=epochs or t.local_epochs, batch_size=batch_size or t.batch_size, lr=lr or t.lr,
                seed=seed, weight_decay=t.weight_decay,
            )
            return get_lora_state(model), result

    def evaluate(self, state: Mapping[str, torch.Tensor]) -> EvalResult:
        """Loss and perplexity of the adapter on this organization's holdout."""
        with self.borrowed(state) as model:
            return evaluate_local(model, self.holdout_data)

    # -- unlearning: record selection, gradients, Hessian-vector products, local forgetting ----------
    def split_records(self, record_ids: Sequence[str]) -> RecordSplit:
        """Split the training records into those named by ``record_ids`` and the rest.

        A record matches an id equal to its own or to its base before ``#`` (``canary-org-0-1``
        names every inserted copy ``canary-org-0-1#k``).

        Raises
        ------
        DataError
            If an id matches no training record (the message shows some valid ids).
        """
        wanted = set(record_ids)
        matched = {w: False for w in wanted}
        forget, retain = [], []
        for r in self.data.train:
            hit = [w for w in (r.id, r.id.split("#", 1)[0]) if w in wanted]
            for w in hit:
                matched[w] = True
            (forget if hit else retain).append(r)
        unknown = sorted(w for w, ok in matched.items() if not ok)
        if unknown:
            raise DataError(
                f"organization {self.name!r} has no training records with ids {unknown[:5]}; expected ids "
                f"such as {[r.id for r in self.data.train[:3]]}: list the ids of records it trained on"
            )
        max_length = self.settings.data.max_length
        encode = functools.partial(encode_texts, self.base.tokenizer, max_length=max_length)
        return RecordSplit(forget=encode([r.text for r in forget]),
                           retain=encode([r.text for r in retain]) if retain else None,
                           forget_ids=tuple(r.id for r in forget))

    def records(self, exclude: Sequence[str] = ()) -> EncodedData:
        """The training records without those named by ``exclude`` (ids the organization forgot)."""
        if is_canary(self.name):
            raise DataError(f"{self.name!r} is a canary organization of the client-level audit and holds no "
                            "records to compute gradients on; erase with sisa or retrain in a canary run")
        if not exclude:
            return self.train_data
        retain = self.split_records(exclude).retain
        if retain is None:
            raise DataError(f"organization {self.name!r} has no training records left after excluding "
                            f"{len(exclude)} forgotten record ids; erase the organization instead")
        return retain

    def gradient(self, state: Mapping[str, torch.Tensor], *, exclude: Sequence[str] = ()):
        """Gradient of the mean training loss at ``state`` (see :mod:`fedunlearn.training.secondorder`)."""
        from fedunlearn.training.secondorder import loss_gradient

        data = self.records(exclude)
        with self.borrowed(state) as model:
            return loss_gradient(model, data)

    def hvp(self, state: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor], *,
            exclude: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        """Hessian of the mean training loss at ``state`` times ``vector``."""
        from fedunlearn.training.secondorder import hessian_vector_product

        data = self.records(exclude)
        with self.borrowed(state) as model:
            return hessian_vector_product(model, data, vector)

    def solve(self, state: Mapping[str, torch.Tensor], g: Mapping[str, torch.Tensor], *, exclude: Sequence[str] = (),
              **options):
        """GIANT local step: solve ``(c·C + λI) x = g`` on the local records (:func:`~fedunlearn.training.secondorder.local_solve`)."""
        from fedunlearn.training.secondorder import local_solve

        data = self.records(exclude)
        with self.borrowed(state) as model:
            return local_solve(model, data, g, **options)

    def forget(self, state: Mapping[str, torch.Tensor], record_ids: Sequence[str], *, method: str, seed: int,
               epochs: int, lr: float, beta: float, retain_weight: float, exclude: Sequence[str] = ()):
        """Forget ``record_ids`` locally (GA / GradDiff / NPO); return the new state and the report.

        ``exclude``: records forgotten earlier, left out of the retain set (not forgotten again).
        """
        from fedunlearn.training.forget import forget_local

        split = self.split_records(record_ids)
        if exclude:
            split = RecordSplit(forget=split.forget, forget_ids=split.forget_ids,
                                retain=self.split_records([*record_ids, *exclude]).retain)
        with self.borrowed(state) as model:
            result = forget_local(model, split.forget, split.retain, method=method, epochs=epochs,
                                  batch_size=self.settings.train.batch_size, lr=lr, seed=seed, beta=beta,
                                  retain_weight=retain_weight)
            return get_lora_state(model), result
