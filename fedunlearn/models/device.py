"""Where a model runs and in which floating-point type.

A :class:`DeviceSpec` pairs a :class:`torch.device` with the dtype its base-model weights are
loaded in. :func:`pick_device` chooses one: CUDA with ``bfloat16`` when a GPU is present, otherwise
the CPU with ``float32``. LoRA states exchanged between organizations are always CPU ``float32``
(see :func:`fedunlearn.models.get_lora_state`), whatever the device of each organization.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedunlearn.errors import ConfigError, ModelError

__all__ = ["DEVICE_CHOICES", "SMALL_MODEL_PARAMETERS", "DeviceSpec", "pick_device", "set_cpu_threads"]

#: Values accepted by :func:`pick_device`.
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DeviceSpec:
    """A device and the dtype base-model weights use on it.

    Attributes
    ----------
    device : torch.device
        Where the model's parameters live.
    dtype : torch.dtype
        Floating-point type of the frozen base weights (``float32`` on CPU, ``bfloat16`` on CUDA).
    """

    device: torch.device
    dtype: torch.dtype

    def __post_init__(self) -> None:
        if not isinstance(self.device, torch.device):
            raise ConfigError(
                f"DeviceSpec.device is {self.device!r} ({type(self.device).__name__}); expected a "
                "torch.device: pass torch.device('cpu') or use pick_device()"
            )
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ConfigError(
                f"DeviceSpec.dtype is {self.dtype!r}; expected a floating-point torch.dtype such as "
                "torch.float32 or torch.bfloat16"
            )


def pick_device(prefer: str = "auto") -> DeviceSpec:
    """Choose the device and dtype for the base model.

    Parameters
    ----------
    prefer : {"auto", "cpu", "cuda"}
        ``"auto"`` takes CUDA with ``bfloat16`` when a GPU is available, else the CPU with
        ``float32``. ``"cpu"`` always gives CPU/``float32``; ``"cuda"`` gives the current CUDA
        device with ``bfloat16`` (``float16`` on GPUs without bfloat16 support).

    Returns
    -------
    DeviceSpec

    Raises
    ------
    ConfigError
        If `prefer` is not one of :data:`DEVICE_CHOICES`.
    ModelError
        If ``"cuda"`` was asked for but no CUDA device is available.
    """
    if not isinstance(prefer, str) or prefer.strip().lower() not in DEVICE_CHOICES:
        raise ConfigError(
            f"device preference {prefer!r} is not supported; expected one of "
            f"{', '.join(DEVICE_CHOICES)}: use 'auto' to take a GPU when there is one"
        )
    choice = prefer.strip().lower()
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return DeviceSpec(torch.device("cpu"), torch.float32)
    if not torch.cuda.is_available():
        raise ModelError(
            "device 'cuda' was requested but torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
            "use device 'auto' or 'cpu', or install a CUDA build of torch"
        )
    index = torch.cuda.current_device()
    # bfloat16 keeps float32's range, so the frozen base needs no loss scaling; very old GPUs
    # (before Ampere) lack it and fall back to float16.
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return DeviceSpec(torch.device("cuda", index), dtype)


# Below this size, one CPU thread per process is faster than several: the matrices are so small
# that OpenMP start-up and spin-waiting dominate (measured 15x slower with 2 threads on a loaded
# 2-core machine for the embedded default model). Bigger models use every core.
SMALL_MODEL_PARAMETERS = 20_000_000


def set_cpu_threads(model: torch.nn.Module, threads: int = 0) -> int:
    """Set torch's intra-op CPU threads for ``model`` (0 = auto); return the number set."""
    import os

    if threads <= 0:
        n_params = sum(p.numel() for p in model.parameters())
        threads = 1 if n_params < SMALL_MODEL_PARAMETERS else (os.cpu_count() or 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
