"""The ClientApp's handlers called directly with Flower Messages."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Context, Message, RecordDict

from clients.app import make_app
from fedunlearn.config import settings_to_flat
from fedunlearn.errors import ConfigError
from fedunlearn.federation import protocol
from fedunlearn.federation.coordinator import initial_state
from fedunlearn.models import resolve_model_path
from fedunlearn.runs import RunFolder
from fedunlearn.training.client import organization_data, organization_name


def _ctx(settings, node_config):
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(),
                   run_config=settings_to_flat(settings))


def _msg(content, message_type):
    msg = Message(content, dst_node_id=5, message_type=message_type)
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def test_identity_from_node_config(small_settings):
    assert organization_name(small_settings, {"partition-id": 2, "num-partitions": 3}) == "org-2"
    assert organization_name(small_settings, {"org": "org-1"}) == "org-1"
    with pytest.raises(ConfigError, match="partition-id 5 but the run has 3"):
        organization_name(small_settings, {"partition-id": 5})
    with pytest.raises(ConfigError, match="'org-9', which is not in the run"):
        organization_name(small_settings, {"org": "org-9"})
    with pytest.raises(ConfigError, match="--node-config"):
        organization_name(small_settings, {})


def test_identify_train_evaluate_handlers(small_settings, tmp_path):
    app = make_app()
    ctx = _ctx(small_settings, {"partition-id": 1, "num-partitions": 3})
    reply = app(_msg(protocol.make_content(), protocol.IDENTIFY), ctx)
    assert protocol.config_of(reply)["org"] == "org-1"

    run = RunFolder.create_or_resume(tmp_path / "r", small_settings, resolve_model_path(small_settings.model.path))
    state = initial_state(run, shard=0)
    content = protocol.make_content(state=state, config={"round": 1, "shard": 0, "org": "org-1", "seed": 3,
                                                         "epochs": 2, "lr": 0.02, "batch-size": 8})
    reply = app(_msg(content, protocol.TRAIN), ctx)
    parsed = protocol.parse_reply(reply, expect_state=True)
    data = organization_data(small_settings, "org-1")
    assert parsed.metrics["num-examples"] == len(data.train)
    assert parsed.metrics["train-loss"] < parsed.metrics["train-loss-first"]
    assert set(parsed.state) == set(state)
    assert any(not torch.equal(parsed.state[k], state[k]) for k in state)
    # the same message again gives bit-identical tensors (determinism for exact erasure)
    again = protocol.parse_reply(app(_msg(content, protocol.TRAIN), ctx), expect_state=True)
    assert all(torch.equal(again.state[k], parsed.state[k]) for k in state)

    ev = app(_msg(protocol.make_content(state=parsed.state, config={"round": 1}), protocol.EVALUATE), ctx)
    metrics = protocol.parse_reply(ev, expect_state=False).metrics
    assert metrics["num-examples"] == len(data.holdout) and metrics["eval-loss"] > 0


def test_train_message_for_another_org_is_refused(small_settings, tmp_path):
    app = make_app()
    run = RunFolder.create_or_resume(tmp_path / "r", small_settings, resolve_model_path(small_settings.model.path))
    content = protocol.make_content(state=initial_state(run, 0), config={"org": "org-0", "seed": 1})
    with pytest.raises(Exception, match="reached organization 'org-2'"):
        app(_msg(content, protocol.TRAIN), _ctx(small_settings, {"partition-id": 2}))
