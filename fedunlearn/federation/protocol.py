"""The messages the server and the organizations exchange, in one place.

Every message carries a :class:`~flwr.app.RecordDict` with at most three records:

``arrays``  an :class:`~flwr.app.ArrayRecord` with a LoRA state (canonical key names)
``config``  a :class:`~flwr.app.ConfigRecord` with instructions (round, shard, seed, ...)
``metrics`` a :class:`~flwr.app.MetricRecord` in replies (``num-examples`` always included)

Message types (Flower accepts ``train``, ``evaluate`` and ``query`` with an optional suffix):

=================== ===================================================================
``query.identify``  which organization runs on this node (from its node config)
``train``           local LoRA fit starting from the sent adapter; reply: new adapter
``evaluate``        loss and perplexity of the sent adapter on the local holdout
``query.grad``      gradient of the local training loss at the sent adapter (reply: arrays)
``query.hvp``       Hessian of the local training loss at the sent adapter times ``vector/*``
``query.solve``     GIANT local Newton step: solve (c·H + λI) x = ``vector/*`` on local data
``train.forget``    record-level forgetting (GA, GradDiff, NPO) of listed records; reply: adapter
=================== ===================================================================

A ``train`` reply without an adapter is valid in one case: the organization refused the round
because its DP budget is spent (:func:`budget_refusal_content`; metric ``dp-budget-exhausted`` = 1,
the reason in ``config``). With record-level DP the ``train`` instructions carry the server's
account of the organization's earlier DP-SGD rounds (:func:`dp_history_config`), so that its
pre-round budget check is for the cumulative ε.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedunlearn.errors import FederationError

__all__ = [
    "BUDGET_EXHAUSTED",
    "EVALUATE",
    "FORGET",
    "IDENTIFY",
    "QUERY_GRAD",
    "QUERY_HVP",
    "QUERY_SOLVE",
    "TRAIN",
    "Reply",
    "budget_refusal_content",
    "config_of",
    "dp_history_config",
    "dp_history_of",
    "make_content",
    "parse_reply",
    "reply_content",
    "state_of",
]

TRAIN = "train"
EVALUATE = "evaluate"
IDENTIFY = "query.identify"
QUERY_GRAD = "query.grad"
QUERY_HVP = "query.hvp"
QUERY_SOLVE = "query.solve"
GRADIENT_PREFIX = "gradient/"
"""Keys of a ``query.solve`` reply that carry the local gradient ∇L_i(θ) next to the solution."""
EXCLUDE_RECORDS = "exclude-records"
"""Config key: newline-separated record ids an organization leaves out (it forgot them)."""
FORGET = "train.forget"
VECTOR_PREFIX = "vector/"
"""Keys of the ``arrays`` record that carry a query's vector (next to the adapter's own keys)."""
BUDGET_EXHAUSTED = "dp-budget-exhausted"
"""Metric of a ``train`` reply (1) that refuses the round: the organization's DP budget is spent."""
DP_HISTORY = ("dp-history-z", "dp-history-q", "dp-history-steps")
"""Config keys of the organization's earlier DP-SGD rounds as the server logged them: (z, q, steps) lists."""


def make_content(
    *, state: Mapping[str, torch.Tensor] | None = None, config: Mapping[str, object] | None = None
) -> RecordDict:
    """Build the content of an instruction message."""
    content = RecordDict()
    if state is not None:
        content["arrays"] = ArrayRecord({k: v.detach().cpu().contiguous() for k, v in state.items()})
    content["config"] = ConfigRecord(dict(config or {}))
    return content


def reply_content(
    *, metrics: Mapping[str, float | int], state: Mapping[str, torch.Tensor] | None = None,
    config: Mapping[str, object] | None = None,
) -> RecordDict:
    """Build the content of a reply: an optional adapter, metrics and optional config (strings)."""
    content = RecordDict()
    if state is not None:
        content["arrays"] = ArrayRecord({k: v.detach().cpu().contiguous() for k, v in state.items()})
    content["metrics"] = MetricRecord({k: v for k, v in metrics.items()})
    if config:
        content["config"] = ConfigRecord(dict(config))
    return content


def budget_refusal_content(*, reason: str, epsilon: float, max_epsilon: float) -> RecordDict:
    """Content of a ``train`` reply that refuses the round before training: the DP budget is spent.

    ``epsilon`` is the organization's predicted ε had it trained (``inf`` becomes 1e300).
    """
    eps = float(epsilon) if math.isfinite(epsilon) else 1e300
    return reply_content(metrics={"num-examples": 0, BUDGET_EXHAUSTED: 1, "dp-epsilon-predicted": eps,
                                  "dp-max-epsilon": float(max_epsilon)}, config={"reason": reason})


def dp_history_config(history) -> dict[str, object]:
    """Train-config entries carrying a DP-SGD history [(z, q, steps), ...] (empty: none)."""
    history = list(history)
    if not history:
        return {}
    return {DP_HISTORY[0]: [float(z) for z, _, _ in history], DP_HISTORY[1]: [float(q) for _, q, _ in history],
            DP_HISTORY[2]: [int(n) for _, _, n in history]}


def dp_history_of(config: Mapping[str, object]) -> list[tuple[float, float, int]]:
    """The DP-SGD history a train config carries (see :func:`dp_history_config`); [] when none."""
    if DP_HISTORY[0] not in config:
        return []
    z, q, n = (list(config.get(k, [])) for k in DP_HISTORY)  # type: ignore[call-overload]
    if not len(z) == len(q) == len(n):
        raise FederationError(f"train config has a DP history of unequal lengths (z {len(z)}, q {len(q)}, "
                              f"steps {len(n)}): the server must send one (z, q, steps) per earlier round")
    return [(float(a), float(b), int(c)) for a, b, c in zip(z, q, n)]


def config_of(message: Message) -> dict[str, object]:
    """The ``config`` record of a message as a plain dict (empty when absent)."""
    content = message.content
    if "config" not in content:
        return {}
    return dict(content["config"])


def state_of(message: Message) -> dict[str, torch.Tensor]:
    """The LoRA state carried by a message; FederationError when it has none."""
    content = message.content
    if "arrays" not in content:
        raise FederationError(
            f"message of type {message.metadata.message_type!r} carries no 'arrays' record: "
            "expected a LoRA adapter state"
        )
    record = content["arrays"]
    return {k: t.float() for k, t in record.to_torch_state_dict().items()}


@dataclass(frozen=True)
class Reply:
    """A validated reply from one organization."""

    node_id: int
    metrics: dict[str, float]
    config: dict[str, object]
    state: dict[str, torch.Tensor] | None

    @property
    def budget_refusal(self) -> str | None:
        """Why the organization refused a ``train`` round over its DP budget (None: it did not)."""
        if self.metrics.get(BUDGET_EXHAUSTED, 0.0) != 1.0:
            return None
        return str(self.config.get("reason", "")) or "the organization's DP budget is spent"


def parse_reply(message: Message, *, expect_state: bool) -> Reply:
    """Check a reply and extract it; FederationError names the node and what was wrong."""
    node = message.metadata.src_node_id
    if message.has_error():
        err = message.error
        raise FederationError(f"node {node} replied with an error (code {err.code}): {err.reason}")
    content = message.content
    if "metrics" not in content:
        raise FederationError(f"reply from node {node} has no 'metrics' record")
    metrics = {k: float(v) for k, v in content["metrics"].items() if not isinstance(v, list)}
    refused = metrics.get(BUDGET_EXHAUSTED) == 1.0 and message.metadata.message_type == TRAIN and "arrays" not in content
    state = state_of(message) if expect_state and not refused else None  # a budget refusal carries no adapter
    if state is not None:
        if "num-examples" not in metrics or metrics["num-examples"] <= 0:
            raise FederationError(f"train reply from node {node} lacks a positive 'num-examples' metric")
        for key, tensor in state.items():
            if not torch.isfinite(tensor).all():
                raise FederationError(f"update from node {node} has non-finite values in {key!r}: rejected")
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise FederationError(f"reply from node {node} has a non-finite metric {key}={value}")
    return Reply(node_id=node, metrics=metrics, config=config_of(message), state=state)
