"""Addressing organizations by name over a Flower ``Grid``.

Flower's node ids are random per run; organizations are identified by the names in their node
config. :func:`discover` asks every node who it is (``query.identify``) and maps names to node ids;
:func:`exchange` sends one message per organization and returns the replies by organization.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from flwr.app import Message
from flwr.serverapp import Grid

from fedunlearn import interrupt
from fedunlearn.errors import FederationError, NodesMissingError
from fedunlearn.federation import protocol

__all__ = ["discover", "exchange", "exchange_partial", "send_and_receive"]

PULL_INTERVAL = 0.5
"""Seconds between reply pulls from a SuperLink (Flower's ``HttpGrid.send_and_receive`` sleeps 3 s;
each pull is an HTTPS request that costs the SuperLink CPU)."""


def send_and_receive(grid: Grid, msgs: list[Message], *, timeout: float) -> list[Message]:
    """``grid.send_and_receive`` that stops on request (:func:`fedunlearn.interrupt.check`).

    Flower's grids (a real SuperLink's ``HttpGrid``, the simulation's ``InMemoryGrid``) are pulled
    here, every :data:`PULL_INTERVAL` s for a SuperLink (instead of Flower's fixed 3 s) and every
    0.1 s in simulation, and a requested stop raises :class:`~fedunlearn.interrupt.Interrupted`
    between pulls; other grids (e.g. the tests' in-process one) are called as they are.
    """
    from flwr.superlink.grid.http_grid import HttpGrid
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    interrupt.check("while waiting for the organizations' replies")
    if not isinstance(grid, (HttpGrid, InMemoryGrid)):
        return list(grid.send_and_receive(msgs, timeout=timeout))
    interval = PULL_INTERVAL if isinstance(grid, HttpGrid) else 0.1
    waiting = set(grid.push_messages(msgs))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        got = list(grid.pull_messages(waiting))
        replies += got
        waiting -= {m.metadata.reply_to_message_id for m in got}
        if not waiting or time.monotonic() >= deadline:
            break
        interrupt.check("while waiting for the organizations' replies")
        time.sleep(interval)
    return replies


def discover(grid: Grid, expected: Sequence[str], *, timeout: float, poll: float = 0.5,
             fingerprints: dict[str, str] | None = None) -> dict[str, int]:
    """Wait until every expected organization's node has registered; return name -> node id.

    Nodes may register after the ServerApp starts (Flower simulation and deployment alike), so this
    polls ``grid.get_node_ids()`` and identifies new nodes until all names are found or ``timeout``
    seconds pass (FederationError naming the missing organizations). When ``fingerprints`` is
    given it is filled with each organization's data fingerprint (``data-sha256`` of its reply).
    """
    deadline = time.monotonic() + timeout
    found: dict[str, int] = {}
    asked: set[int] = set()
    refused: dict[int, str] = {}
    while True:
        new = [n for n in grid.get_node_ids() if n not in asked]
        if new:
            msgs = [Message(protocol.make_content(), dst_node_id=n, message_type=protocol.IDENTIFY) for n in new]
            replies = send_and_receive(grid, msgs, timeout=max(1.0, deadline - time.monotonic()))
            answered = set()
            for reply in replies:
                node = reply.metadata.src_node_id
                answered.add(node)
                if reply.has_error():
                    refused[node] = reply.error.reason
                    continue
                name = str(protocol.config_of(reply).get("org", ""))
                problem = str(protocol.config_of(reply).get("data-error", ""))
                if problem and name in expected:  # a node that cannot read its organization's data
                    refused[node] = f"{name}: {problem}"
                    continue
                if name in expected:
                    if name in found and found[name] != node:
                        raise FederationError(
                            f"two nodes ({found[name]} and {node}) claim organization {name!r}: "
                            "each organization must run exactly one SuperNode"
                        )
                    found[name] = node
                    if fingerprints is not None:
                        fingerprints[name] = str(protocol.config_of(reply).get("data-sha256", ""))
            asked |= answered
        missing = [n for n in expected if n not in found]
        if not missing:
            return found
        detail = "; ".join(f"node {n}: {r}" for n, r in refused.items())
        if refused and len(found) + len(refused) >= len(expected):
            # Every node that could still be a missing organization has refused: waiting out the
            # timeout would only delay the node's own error (e.g. a malformed data file).
            raise FederationError(
                f"organizations {missing} did not identify: nodes refused ({detail}); "
                "fix the node's error and restart its SuperNode"
            )
        if time.monotonic() > deadline:
            raise NodesMissingError(
                f"organizations {missing} did not connect within {timeout:.0f} s (found {sorted(found)})"
                + (f"; nodes that refused to identify: {detail}" if detail else "")
                + ". Start their SuperNodes or raise run.discovery-timeout"
            )
        interrupt.check("while waiting for the organizations' nodes")
        time.sleep(poll)


def exchange(
    grid: Grid,
    nodes: Mapping[str, int],
    contents: Mapping[str, object],
    *,
    message_type: str,
    group_id: str,
    timeout: float,
    expect_state: bool,
) -> dict[str, protocol.Reply]:
    """Send ``contents[org]`` to each organization's node and collect validated replies by name.

    Raises FederationError naming every organization without a valid reply (see
    :func:`exchange_partial` for the replies that did arrive).
    """
    out, failed = exchange_partial(grid, nodes, contents, message_type=message_type, group_id=group_id,
                                   timeout=timeout, expect_state=expect_state)
    if failed:
        detail = "; ".join(f"{org}: {why}" for org, why in sorted(failed.items()))
        raise FederationError(f"{message_type} ({group_id}) failed for organizations {sorted(failed)}: {detail}")
    return out


def exchange_partial(
    grid: Grid,
    nodes: Mapping[str, int],
    contents: Mapping[str, object],
    *,
    message_type: str,
    group_id: str,
    timeout: float,
    expect_state: bool,
) -> tuple[dict[str, protocol.Reply], dict[str, str]]:
    """Like :func:`exchange`, but return ``(replies, failed)``: valid replies and, for every other
    organization, why it has none (an error reply, an invalid reply, or no reply in time)."""
    by_node = {nodes[org]: org for org in contents}
    msgs = [
        Message(contents[org], dst_node_id=nodes[org], message_type=message_type, group_id=group_id)
        for org in contents
    ]
    replies = send_and_receive(grid, msgs, timeout=timeout)
    out: dict[str, protocol.Reply] = {}
    failed: dict[str, str] = {}
    for reply in replies:
        org = by_node.get(reply.metadata.src_node_id)
        if org is None:
            continue
        try:
            out[org] = protocol.parse_reply(reply, expect_state=expect_state)
        except FederationError as exc:
            failed[org] = str(exc)
    for org in contents:
        if org not in out and org not in failed:
            failed[org] = f"no reply within {timeout:.0f} s"
    return out, failed
