"""An in-process Flower ``Grid``: real Messages to a real ClientApp, every node in this process.

Flower's simulation engine starts a Ray cluster (seconds of start-up and node discovery on every
command) to run the same ClientApp. For work whose organizations all live on this machine (a
simulated consortium's erasure, the tests), :class:`InProcessGrid` calls the ClientApp directly,
one node after the other, each with its own :class:`~flwr.app.Context` (``partition-id`` node
config and persistent ``state``, as the simulation engine gives). On a CPU machine that is what
the engine does anyway (one actor using every core; see FIELD-NOTES), without its start-up.

:func:`inprocess_grid` builds one for a run's settings, loading the ClientApp by reference (as
``flwr run`` does), so the library does not import the front end ``clients/``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

from fedunlearn.config import Settings, settings_to_flat

__all__ = ["InProcessGrid", "inprocess_grid"]


def _task_identity() -> None:
    """Messages built outside a Flower runtime need a task identity (the engines set their own)."""
    from flwr.supercore.task_identity import TaskIdentity

    try:
        TaskIdentity.run_id  # noqa: B018 - raises RuntimeError when unset
    except RuntimeError:
        TaskIdentity.run_id = 1
        TaskIdentity.task_id = 1
        TaskIdentity.node_id = 1


class InProcessGrid(Grid):
    """A Grid whose ``num_nodes`` nodes run ``client_app`` in this process.

    ``node_configs`` (one per node) default to ``{"partition-id": i, "num-partitions": n}``;
    ``before_send(message)`` is a fault-injection hook for tests; ``sent`` keeps every message.
    """

    def __init__(self, client_app, num_nodes: int, run_config: dict | None = None,
                 node_configs: list[dict] | None = None) -> None:
        _task_identity()
        self.app = client_app
        ids = itertools.count(1001, 17)
        self.contexts: dict[int, Context] = {}
        for pid in range(num_nodes):
            node_id = next(ids)
            cfg = (node_configs or [{}] * num_nodes)[pid] or {"partition-id": pid, "num-partitions": num_nodes}
            self.contexts[node_id] = Context(run_id=1, node_id=node_id, node_config=dict(cfg),
                                             state=RecordDict(), run_config=dict(run_config or {}))
        self.sent: list[Message] = []
        self.before_send: Callable[[Message], None] | None = None
        self._replies: dict[str, Message] = {}

    # -- Grid API -------------------------------------------------------------------------------
    def set_run(self, run) -> None:  # pragma: no cover - not used
        self._run = run

    @property
    def run(self):  # pragma: no cover - not used
        return getattr(self, "_run", None)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node's ClientApp now; its reply waits for :meth:`pull_messages`."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            self.sent.append(msg)
            if self.before_send is not None:
                self.before_send(msg)
            ctx = self.contexts[msg.metadata.dst_node_id]
            try:
                reply = self.app(msg, ctx)
            except Exception as exc:  # Flower turns ClientApp exceptions into error replies too
                reply = Message(Error(code=1, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The waiting replies to ``message_ids`` (each handed out once)."""
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def inprocess_grid(settings: Settings) -> InProcessGrid:
    """The run's organizations (and audit canary organizations) as in-process nodes of its ClientApp."""
    from fedunlearn.federation.simulation import CLIENT_APP_FACTORY, _load

    overrides = settings_to_flat(settings)
    client_app = _load(CLIENT_APP_FACTORY)(overrides)
    nodes = len(settings.organizations) + len(settings.canary_organizations)
    return InProcessGrid(client_app, nodes, run_config=overrides)
