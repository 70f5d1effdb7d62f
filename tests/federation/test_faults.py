"""Faults in a round: dropouts (retry, then commit with a quorum), rejected updates (NaN, norm)."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ArrayRecord

from clients.app import make_app
from fedunlearn.config import RunSettings, settings_to_flat
from fedunlearn.errors import ConfigError, FederationError
from fedunlearn.federation import protocol
from fedunlearn.federation.faults import quorum, update_norm
from fedunlearn.federation.workflow import train_workflow
from fedunlearn.ledger import Ledger
from tests.localgrid import LocalGrid


class DroppingGrid(LocalGrid):
    """A LocalGrid on which some organizations' train replies never arrive (``drops[pid]`` times)."""

    def __init__(self, *args, drops: dict[int, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drops = dict(drops)
        self.pid = {nid: ctx.node_config["partition-id"] for nid, ctx in self.contexts.items()}

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for reply in super().send_and_receive(messages, timeout=timeout):
            pid = self.pid[reply.metadata.src_node_id]
            if reply.metadata.message_type == protocol.TRAIN and self.drops.get(pid, 0) > 0:
                self.drops[pid] -= 1  # lost: the node went away mid-round
                continue
            replies.append(reply)
        return replies


def _metrics(settings, kind):
    path = settings.run.dir + "/metrics.jsonl"
    return [r for r in map(json.loads, open(path, encoding="utf-8")) if r.get("kind") == kind]


def test_a_dropout_is_retried_once_and_the_round_completes_with_everyone(small_settings):
    grid = DroppingGrid(make_app(), 3, run_config=settings_to_flat(small_settings), drops={1: 1})
    train_workflow(grid, small_settings)
    with Ledger.open(small_settings.run.dir) as ledger:
        chain = ledger.chain(0)
        assert [c.round for c in chain] == [0, 1, 2]
        assert sorted(c.org for c in ledger.contributions(chain[1].id)) == ["org-0", "org-1", "org-2"]
        assert not [k for k in ledger.meta if k.startswith("round-absent/")]


def test_a_lasting_dropout_fails_the_round_by_default_and_nothing_is_committed(small_settings):
    grid = DroppingGrid(make_app(), 3, run_config=settings_to_flat(small_settings), drops={1: 99})
    with pytest.raises(FederationError, match=r"\['org-1'\].*no reply.*2 attempt.*min-fraction = 1 needs 3"):
        train_workflow(grid, small_settings)
    with Ledger.open(small_settings.run.dir) as ledger:
        assert ledger.head(0).round == 0


def test_with_min_fraction_the_round_commits_without_the_dropout_and_records_it(small_settings):
    settings = small_settings.replace(run={"min_fraction": 0.6})
    grid = DroppingGrid(make_app(), 3, run_config=settings_to_flat(settings), drops={2: 2})  # round 1, both tries
    train_workflow(grid, settings)
    with Ledger.open(settings.run.dir) as ledger:
        chain = ledger.chain(0)
        assert sorted(c.org for c in ledger.contributions(chain[1].id)) == ["org-0", "org-1"]
        assert sorted(c.org for c in ledger.contributions(chain[2].id)) == ["org-0", "org-1", "org-2"]  # back
        note = json.loads(ledger.meta[f"round-absent/{chain[1].id}"])
        assert note["round"] == 1 and list(note["absent"]) == ["org-2"]
        assert sum(c.weight for c in ledger.contributions(chain[1].id)) == pytest.approx(1.0)
    dropouts = _metrics(settings, "dropout")
    assert [(d["org"], d["round"], d["attempts"]) for d in dropouts] == [("org-2", 1, 2)]


def _scaling_app(pid_bad: int, value: float | None):
    good = make_app()

    def app(msg, ctx):
        reply = good(msg, ctx)
        if msg.metadata.message_type == protocol.TRAIN and ctx.node_config["partition-id"] == pid_bad:
            state = reply.content["arrays"].to_torch_state_dict()
            k = sorted(state)[0]
            state[k] = torch.full_like(state[k], float("nan")) if value is None else state[k] + value
            reply.content["arrays"] = ArrayRecord(state)
        return reply

    return app


def test_an_update_with_an_absurd_norm_is_rejected_logged_and_not_retried(small_settings):
    settings = small_settings.replace(run={"min_fraction": 0.5})
    grid = LocalGrid(_scaling_app(1, 1e4), 3, run_config=settings_to_flat(settings))
    train_workflow(grid, settings)
    with Ledger.open(settings.run.dir) as ledger:
        for ckpt in ledger.chain(0)[1:]:
            assert sorted(c.org for c in ledger.contributions(ckpt.id)) == ["org-0", "org-2"]
    rejected = _metrics(settings, "rejected")
    assert [(r["org"], r["round"]) for r in rejected] == [("org-1", 1), ("org-1", 2)]
    assert "exceeds train.max-update-norm = 1000" in rejected[0]["reason"]
    trains = [m for m in grid.sent if m.metadata.message_type == protocol.TRAIN]
    assert len(trains) == 6  # no retry of a rejected update


def test_a_nan_update_is_rejected_and_with_the_default_policy_fails_the_round(small_settings):
    grid = LocalGrid(_scaling_app(1, None), 3, run_config=settings_to_flat(small_settings))
    with pytest.raises(FederationError, match=r"org-1.*non-finite"):
        train_workflow(grid, small_settings)
    assert [r["org"] for r in _metrics(small_settings, "rejected")] == ["org-1"]


def test_norm_and_quorum_helpers():
    a = {"x": torch.ones(4)}
    assert update_norm({"x": torch.full((4,), 3.0)}, a) == pytest.approx(4.0)
    assert quorum(3, 1.0) == 3 and quorum(3, 0.6) == 2 and quorum(3, 0.01) == 1
    with pytest.raises(ConfigError, match=r"run.min-fraction = 0.0"):
        RunSettings(min_fraction=0.0)
