"""Wrap the frozen base in PEFT LoRA adapters and move adapter weights in and out.

An adapter's state is a plain ``dict[str, Tensor]`` with *canonical* keys: PEFT's parameter names
without the adapter name, e.g. ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``.
These are also the key names PEFT writes into ``adapter_model.safetensors``, so a state can be
exported as-is. States are CPU ``float32`` contiguous clones with sorted keys: they can be hashed,
stored, sent through Flower and averaged independently of the device that produced them.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from typing import TYPE_CHECKING

import torch

from fedunlearn.errors import ConfigError, ModelError
from fedunlearn.models._quiet import quiet_transformers
from fedunlearn.models.base import BaseModel

if TYPE_CHECKING:  # peft imports transformers' modelling stack (seconds): loaded where it is used
    from peft import LoraConfig, PeftModel

__all__ = [
    "LoraSpec",
    "get_lora_state",
    "lora_state_keys",
    "set_lora_state",
    "wrap_lora",
]

# ".lora_A.default.weight" -> ".lora_A.weight": drop the adapter name PEFT puts in module paths.
_ADAPTER_SEGMENT = re.compile(r"\.(lora_[AB])\.[^.]+\.weight$")


@dataclass(frozen=True)
class LoraSpec:
    """LoRA hyper-parameters shared by every organization of a federation.

    Attributes
    ----------
    r : int
        Rank of each update ``ΔW = (alpha / r) · B A``.
    alpha : int
        Scaling numerator (PEFT's ``lora_alpha``).
    dropout : float
        Dropout on the LoRA input, in ``[0, 1)``.
    target_modules : tuple of str
        Names of the linear layers that get adapters (Llama attention projections by default).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        for name in ("r", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"LoraSpec.{name} is {value!r}; expected an int >= 1")
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not (
            0.0 <= dropout < 1.0
        ):
            raise ConfigError(f"LoraSpec.dropout is {dropout!r}; expected a float in [0, 1)")
        modules = self.target_modules
        if isinstance(modules, str) or not isinstance(modules, (tuple, list)):
            raise ConfigError(
                f"LoraSpec.target_modules is {modules!r}; expected a tuple of module names such as "
                "('q_proj', 'v_proj')"
            )
        if not modules or not all(isinstance(m, str) and m for m in modules):
            raise ConfigError(
                f"LoraSpec.target_modules is {modules!r}; expected at least one non-empty name"
            )
        if len(set(modules)) != len(modules):
            raise ConfigError(f"LoraSpec.target_modules {modules!r} repeats a name")
        object.__setattr__(self, "target_modules", tuple(modules))  # lists from TOML become tuples

    @property
    def scaling(self) -> float:
        """``alpha / r``, the factor PEFT multiplies ``B @ A`` by."""
        return self.alpha / self.r

    def to_peft_config(self) -> LoraConfig:
        """The equivalent :class:`peft.LoraConfig` for a causal LM."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=float(self.dropout),
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )


def wrap_lora(base: BaseModel, spec: LoraSpec, *, seed: int, inplace: bool = False) -> PeftModel:
    """Add LoRA adapters to the base model; only they are trainable.

    Parameters
    ----------
    base : BaseModel
        The frozen base from :func:`~fedunlearn.models.load_base_model`.
    spec : LoraSpec
    seed : int
        Seeds the initialization of the ``A`` factors (``B`` starts at zero, so ``ΔW = 0``): the
        same seed gives the same initial adapter on every organization, CPU or GPU.
    inplace : bool, default False
        Inject the adapters into ``base.model`` itself instead of a deep copy. Saves memory for
        large bases, but `base` can then not be wrapped again.

    Returns
    -------
    peft.PeftModel
        On ``base.device``; in train mode with only the ``lora_A``/``lora_B`` weights requiring grad.

    Raises
    ------
    ModelError
        If a target module is absent from the model, or `base.model` already holds adapters.
    """
    from peft import PeftModel, get_peft_model

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed is {seed!r}; expected an int")
    if isinstance(base.model, PeftModel) or any("lora_" in n for n, _ in base.model.named_modules()):
        raise ModelError(
            f"the base model from {str(base.path)!r} already holds LoRA adapters (it was wrapped "
            "with inplace=True); load a fresh base with load_base_model()"
        )
    model = base.model if inplace else copy.deepcopy(base.model)
    # The model must sit on its device *before* get_peft_model: otherwise Opacus' per-sample hooks
    # and the LoRA layers can end up out of sync (opacus issue 820).
    model.to(base.device.device)
    device = base.device.device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        try:
            with quiet_transformers():
                peft_model = get_peft_model(model, spec.to_peft_config())
        except ValueError as exc:
            raise ModelError(
                f"cannot add LoRA to {str(base.path)!r} with target_modules "
                f"{list(spec.target_modules)}: {exc}; name linear layers that exist in the model"
            ) from exc
    _init_factors(peft_model, seed)
    for name, parameter in peft_model.named_parameters():
        parameter.requires_grad_(_ADAPTER_SEGMENT.search(name) is not None)
    peft_model.train()
    return peft_model


@torch.no_grad()
def _init_factors(model: PeftModel, seed: int) -> None:
    """PEFT's default LoRA init (A ~ Kaiming-uniform(a=√5), B = 0) drawn on the CPU.

    PEFT draws A from the RNG of the device the layer sits on, so a GPU and a CPU organization
    would start from different adapters under the same seed. Redrawing A from a seeded CPU
    generator, in sorted key order, makes the initial adapter depend on the seed alone.
    """
    generator = torch.Generator().manual_seed(seed)
    for key, parameter in _lora_parameters(model).items():
        if ".lora_A." in key:
            values = torch.empty(parameter.shape, dtype=torch.float32)  # [r, in]
            torch.nn.init.kaiming_uniform_(values, a=math.sqrt(5), generator=generator)
            parameter.copy_(values.to(device=parameter.device, dtype=parameter.dtype))
        else:
            parameter.zero_()  # [out, r]


def _lora_parameters(model: PeftModel) -> dict[str, torch.nn.Parameter]:
    """Canonical key -> LoRA factor parameter of the active adapter."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise ModelError(
            f"expected a peft.PeftModel from wrap_lora(), got {type(model).__name__}"
        )
    adapter = model.active_adapter
    found: dict[str, torch.nn.Parameter] = {}
    for name, parameter in model.named_parameters():
        match = _ADAPTER_SEGMENT.search(name)
        if match is None or not name.endswith(f".{adapter}.weight"):
            continue
        found[name[: match.start()] + f".{match.group(1)}.weight"] = parameter
    if not found:
        raise ModelError("the model holds no LoRA weights; wrap it with wrap_lora() first")
    return dict(sorted(found.items()))


def lora_state_keys(model: PeftModel) -> list[str]:
    """Sorted canonical keys of the model's LoRA factors."""
    return list(_lora_parameters(model))


def get_lora_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """Copy the LoRA factors out of `model`.

    Returns
    -------
    dict of str to torch.Tensor
        Sorted canonical keys; values are detached, contiguous CPU ``float32`` clones:
        ``lora_A`` of shape ``[r, in]``, ``lora_B`` of shape ``[out, r]``.
    """
    return {
        key: p.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
        for key, p in _lora_parameters(model).items()
    }


def set_lora_state(model: PeftModel, state: Mapping[str, torch.Tensor]) -> None:
    """Load LoRA factors into `model` in place (strictly).

    Parameters
    ----------
    model : peft.PeftModel
    state : mapping of str to torch.Tensor
        Exactly the keys of :func:`lora_state_keys` with matching shapes; any dtype and device.

    Raises
    ------
    ModelError
        Listing missing keys, unexpected keys, shape mismatches or non-finite values.
    """
    parameters = _lora_parameters(model)
    missing = sorted(set(parameters) - set(state))
    unexpected = sorted(set(state) - set(parameters))
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for key in sorted(set(parameters) & set(state)):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(parameters[key].shape):
            problems.append(
                f"{key} has shape {list(value.shape)}, the model expects "
                f"{list(parameters[key].shape)}"
            )
        elif value.is_floating_point() and not bool(torch.isfinite(value).all()):
            problems.append(f"{key} contains NaN or infinite values")
    if problems:
        raise ModelError(
            "LoRA state does not fit the model: " + "; ".join(problems) + ". Pass a state from "
            "get_lora_state() of a model wrapped with the same LoraSpec and base model"
        )
    with torch.no_grad():
        for key, parameter in parameters.items():
            parameter.copy_(state[key].to(device=parameter.device, dtype=parameter.dtype))
