"""Shared fixtures of the ledger tests: a fresh ledger and small deterministic tensor states."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from fedunlearn.ledger import Ledger


def _make_state(seed: int, *, rank: int = 2, width: int = 4) -> dict[str, torch.Tensor]:
    """A tiny LoRA-like state (two factors) drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "layer.lora_A.weight": torch.randn(rank, width, generator=generator),  # (r, in)
        "layer.lora_B.weight": torch.randn(width, rank, generator=generator),  # (out, r)
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def ledger(run_dir: Path) -> Iterator[Ledger]:
    with Ledger.create(run_dir, meta={"seed": "0"}) as opened:
        yield opened


def _flip_byte(path: Path, offset: int = -1) -> None:
    """Change one byte of ``path`` in place (simulated tampering or bit rot)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# Helpers are fixtures (not imported from conftest) so that tests do not depend on sys.path.
@pytest.fixture
def make_state() -> Callable[..., dict[str, torch.Tensor]]:
    return _make_state


@pytest.fixture
def flip_byte() -> Callable[..., None]:
    return _flip_byte
