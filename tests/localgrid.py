"""An in-process Flower ``Grid`` for fast tests: real Messages, a real ClientApp, no Ray.

Each node has its own Context (node_config with ``partition-id``, persistent ``state``), as in
Flower's simulation engine. The end-to-end test in tests/test_simulation.py uses Flower's own
engine; this grid lets unit tests drive many rounds in seconds and inject faults.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid


class LocalGrid(Grid):
    def __init__(self, client_app, num_nodes: int, run_config: dict | None = None,
                 node_configs: list[dict] | None = None) -> None:
        self.app = client_app
        ids = itertools.count(1001, 17)
        self.contexts: dict[int, Context] = {}
        for pid in range(num_nodes):
            node_id = next(ids)
            cfg = (node_configs or [{}] * num_nodes)[pid] or {"partition-id": pid, "num-partitions": num_nodes}
            self.contexts[node_id] = Context(run_id=1, node_id=node_id, node_config=dict(cfg),
                                             state=RecordDict(), run_config=dict(run_config or {}))
        self.sent: list[Message] = []
        self.before_send: Callable[[Message], None] | None = None  # fault injection hook

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

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            self.sent.append(msg)
            if self.before_send is not None:
                self.before_send(msg)
            ctx = self.contexts[msg.metadata.dst_node_id]
            try:
                replies.append(self.app(msg, ctx))
            except Exception as exc:  # Flower turns ClientApp exceptions into error replies too
                replies.append(Message(Error(code=1, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg))
        return replies
