"""Shared fixtures: a tiny base model built once per test session, small settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A model far smaller than the embedded default, so that every test takes seconds. It is built by
# the same code path as the default (tokenizer training, config, pre-training, save_pretrained), on
# the synthetic public corpus: the tests' synthetic organizations share its vocabulary, so their
# records tokenize short and the memorization tests keep their signal (tests of the real-text
# corpus build their own models, see tests/models/test_default.py).
TINY_SPEC_KW = dict(
    vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
    corpus="synthetic", corpus_documents=300, pretrain_steps=20, batch_size=16,
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from fedunlearn.models import DefaultModelSpec, ensure_default_model

    return ensure_default_model(DefaultModelSpec(**TINY_SPEC_KW), cache_dir=tmp_path_factory.mktemp("cache"),
                                progress=False)


@pytest.fixture()
def small_settings(tiny_model_dir, tmp_path):
    """Three organizations with little data, on the tiny model, one local epoch."""
    from fedunlearn.config import OrganizationSettings, Settings

    s = Settings(organizations=tuple(OrganizationSettings(name=f"org-{i}") for i in range(3)))
    return s.replace(
        run={"dir": str(tmp_path / "run"), "discovery_timeout": 180.0},
        model={"path": str(tiny_model_dir), "device": "cpu"},
        data={"records_per_org": 24, "holdout_per_org": 8, "canaries_per_org": 1, "canary_repeats": 2,
              "never_inserted": 5, "public_documents": 20, "max_length": 48},
        train={"rounds": 2, "local_epochs": 2, "batch_size": 8, "lr": 2e-2},
    )


@pytest.fixture(autouse=True, scope="session")
def _flower_task_identity():
    """Messages built outside a Flower runtime need a task identity (run_simulation sets its own)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = 1
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = 1
    yield


@pytest.fixture(autouse=True)
def _forget_without_capture(monkeypatch, request):
    """`fedunlearn forget` runs the pre-erasure evaluation hook by default; it costs seconds per
    erasure, so CLI tests skip it unless marked ``capture_before`` (the Python API passes no hook)."""
    if request.node.get_closest_marker("capture_before") is None:
        import fedunlearn.cli.forget as forget_cli

        monkeypatch.setattr(forget_cli, "_capture_hook", lambda: None)
