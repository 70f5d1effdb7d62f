"""pick_device and DeviceSpec."""

from __future__ import annotations

import pytest
import torch

from fedunlearn.errors import ConfigError, ModelError
from fedunlearn.models import DeviceSpec, pick_device


def test_cpu_is_float32():
    spec = pick_device("cpu")
    assert spec == DeviceSpec(torch.device("cpu"), torch.float32)


def test_auto_matches_availability():
    spec = pick_device()
    if torch.cuda.is_available():
        assert spec.device.type == "cuda" and spec.dtype in (torch.bfloat16, torch.float16)
    else:
        assert spec == pick_device("cpu")


def test_preference_is_case_insensitive():
    assert pick_device(" CPU ") == pick_device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "tpu", "", None, 0])
def test_unknown_preference_names_choices(bad):
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        pick_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_absent_is_model_error():
    with pytest.raises(ModelError, match="'cuda' was requested"):
        pick_device("cuda")


def test_device_spec_validates():
    with pytest.raises(ConfigError, match="torch.device"):
        DeviceSpec("cpu", torch.float32)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="floating-point"):
        DeviceSpec(torch.device("cpu"), torch.int64)
