"""Serving options for a sharded run: ΔW merge (default) or an output ensemble, and what each costs.

``topology.combine = "merge"`` serves one adapter whose ΔW is ``Σ_s w_s ΔW_s`` (see
:mod:`~fedunlearn.federation.serving`): one forward pass, but shards interfere inside the network.
``"ensemble"`` serves the shard adapters side by side (``export/shard-K``) and mixes their outputs,
``p(x_t | x_<t) = Σ_s w_s p_s(x_t | x_<t)`` with the same weights ``w_s`` (each shard's share of
training examples): S forward passes, no interference. Either way erasure stays exact, since a
shard that no longer depends on the subject is all that is served.

:func:`serving_utility` measures both on the holdouts of the organizations still in the run.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedunlearn.config import is_canary
from fedunlearn.federation.serving import shard_weights
from fedunlearn.ledger import Ledger
from fedunlearn.models import combine_exact, set_lora_state, wrap_lora
from fedunlearn.runs import RunFolder
from fedunlearn.training.client import OrganizationClient, lora_spec, organization_data
from fedunlearn.training.local import EncodedData

__all__ = ["EnsembleLM", "ServingUtility", "serving_utility"]


class EnsembleLM:
    """Next-token distribution of a weighted mixture of shard adapters on one frozen base.

    Parameters
    ----------
    models : sequence of torch.nn.Module
        Causal LMs (the base wrapped with each shard's adapter), in eval mode.
    weights : sequence of float
        Mixture weights, normalized here.
    """

    def __init__(self, models: Sequence[torch.nn.Module], weights: Sequence[float]) -> None:
        total = math.fsum(weights)
        self.models = list(models)
        self.log_weights = torch.tensor([math.log(w / total) for w in weights])  # [S]

    @torch.no_grad()
    def log_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``log Σ_s w_s p_s(· | x_<t)`` for every position: shape [B, T, V]."""
        B, T = input_ids.shape
        position_ids = torch.arange(T).unsqueeze(0).expand(B, T)  # [B, T]
        per_shard = [
            torch.log_softmax(m(input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=position_ids).logits.float(), dim=-1)  # [B, T, V]
            for m in self.models
        ]
        stacked = torch.stack(per_shard) + self.log_weights.view(-1, 1, 1, 1)  # [S, B, T, V]
        return torch.logsumexp(stacked, dim=0)  # [B, T, V]


@torch.no_grad()
def _holdout_loss(log_probs_fn, data: EncodedData, batch_size: int = 64) -> float:
    """Token-weighted mean next-token loss (nats) under ``log_probs_fn(ids, mask) -> [B, T, V]``."""
    nats, tokens = 0.0, 0
    for i in range(0, len(data), batch_size):
        mask = data.attention_mask[i:i + batch_size]
        width = int(mask.sum(dim=1).max())
        ids, mask = data.input_ids[i:i + batch_size, :width], mask[:, :width]
        logp = log_probs_fn(ids, mask)[:, :-1]  # [B, T-1, V] predicts tokens 1..T-1
        picked = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, T-1]
        keep = mask[:, 1:].bool()  # [B, T-1]
        nats -= float(picked[keep].sum())
        tokens += int(keep.sum())
    return nats / max(tokens, 1)


def _wrapped(client: OrganizationClient, state: Mapping[str, torch.Tensor], rank_multiple: int = 1):
    spec = lora_spec(client.settings)
    spec = dataclasses.replace(spec, r=spec.r * rank_multiple, alpha=spec.alpha * rank_multiple)
    base = copy.copy(client.base)
    base.model = copy.deepcopy(client.base.model)
    model = wrap_lora(base, spec, seed=0)
    set_lora_state(model, state)
    return model.eval()


@dataclass(frozen=True)
class ServingUtility:
    """Holdout loss (nats per token) of each serving option, by retained organization."""

    merge: dict[str, float]
    ensemble: dict[str, float]
    weights: dict[int, float]

    @property
    def mean_merge(self) -> float:
        return sum(self.merge.values()) / len(self.merge)

    @property
    def mean_ensemble(self) -> float:
        return sum(self.ensemble.values()) / len(self.ensemble)


def serving_utility(run: RunFolder, ledger: Ledger, organizations: Sequence[str] | None = None) -> ServingUtility:
    """Holdout loss of the merged and the ensembled served model on retained organizations.

    Parameters
    ----------
    run, ledger
        The run and its open ledger (the current shard heads are served).
    organizations : sequence of str, optional
        Whose holdouts to use; default every active organization. Their data must be readable
        here (the run's ``data.dir`` or the synthetic consortium).
    """
    settings = run.settings.replace(model={"device": "cpu"})
    weights = shard_weights(ledger, settings.topology.shards)
    order = sorted(weights)
    states = [ledger.get_state(ledger.head(s).hash) for s in order]
    names = list(organizations or [o.name for o in ledger.organizations()  # canaries hold no holdout
                                    if o.status == "active" and not is_canary(o.name)])
    merge, ensemble = {}, {}
    combined = combine_exact(states, [weights[s] for s in order])
    for i, name in enumerate(names):
        client = OrganizationClient(settings=settings, name=name, data=organization_data(settings, name))
        if i == 0:  # the base is shared (cached) by every client: build the served models once
            merged = _wrapped(client, combined, rank_multiple=len(order))
            mixture = EnsembleLM([_wrapped(client, s) for s in states], [weights[s] for s in order])

        def merged_log_probs(ids, mask):
            T = ids.shape[1]
            pos = torch.arange(T).unsqueeze(0).expand_as(ids)
            return torch.log_softmax(merged(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float(), -1)

        merge[name] = _holdout_loss(merged_log_probs, client.holdout_data)
        ensemble[name] = _holdout_loss(mixture.log_probs, client.holdout_data)
    return ServingUtility(merge=merge, ensemble=ensemble, weights=weights)
