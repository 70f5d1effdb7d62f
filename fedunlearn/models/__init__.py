"""Base causal LM, tokenizer, LoRA adapters, ΔW arithmetic and PEFT export.

* :mod:`~fedunlearn.models.device` — :class:`DeviceSpec`, :func:`pick_device`.
* :mod:`~fedunlearn.models.tokenizer` — :func:`train_tokenizer` (byte-level BPE).
* :mod:`~fedunlearn.models.default` — the embedded default model, built locally and cached:
  :class:`DefaultModelSpec`, :data:`SIZES`, :func:`ensure_default_model`, :func:`cache_root`.
* :mod:`~fedunlearn.models.bitsperbyte` — :func:`bits_per_byte` of a model against uniform and
  unigram baselines.
* :mod:`~fedunlearn.models.pretrain` — the short pre-training used by the default build.
* :mod:`~fedunlearn.models.base` — :func:`load_base_model` from a local folder (never a hub).
* :mod:`~fedunlearn.models.lora` — :class:`LoraSpec`, :func:`wrap_lora`, canonical LoRA states.
* :mod:`~fedunlearn.models.delta` — FedAvg and exact (concatenated) ΔW combination, hashing.
* :mod:`~fedunlearn.models.export` — standard PEFT adapter folders.
* :mod:`~fedunlearn.models.served` — portable base-model names; :func:`load_served` anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedunlearn.lazy import lazy_package

#: Where each public name lives: the package imports its modules on first use, so that a command
#: that needs a device setting or a tensor hash does not load transformers' modelling stack.
_WHERE = {
    "bitsperbyte": ("BitsPerByte", "UnigramModel", "bits_per_byte"),
    "base": ("BaseModel", "load_base_model", "resolve_model_path"),
    "default": ("BUILD_INFO_FILE", "SIZES", "DefaultModelSpec", "cache_root", "default_model_dir", "ensure_default_model", "spec_for_size"),
    "delta": ("average_states", "combine_exact", "delta_weights", "lora_modules", "state_from_bytes", "state_sha256", "state_to_bytes"),
    "device": ("DEVICE_CHOICES", "SMALL_MODEL_PARAMETERS", "DeviceSpec", "pick_device", "set_cpu_threads"),
    "export": ("ADAPTER_CONFIG_FILE", "ADAPTER_WEIGHTS_FILE", "adapter_files_sha256", "export_adapter", "export_combined"),
    "lora": ("LoraSpec", "get_lora_state", "lora_state_keys", "set_lora_state", "wrap_lora"),
    "pretrain": ("PretrainResult", "pack_corpus", "pretrain"),
    "served": ("BASE_INFO_FILE", "load_served", "served_base"),
    "tokenizer": ("BOS_TOKEN", "EOS_TOKEN", "PAD_TOKEN", "SPECIAL_TOKENS", "train_tokenizer"),
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from fedunlearn.models.bitsperbyte import BitsPerByte, UnigramModel, bits_per_byte
    from fedunlearn.models.base import BaseModel, load_base_model, resolve_model_path
    from fedunlearn.models.default import (
        BUILD_INFO_FILE,
        SIZES,
        DefaultModelSpec,
        cache_root,
        default_model_dir,
        ensure_default_model,
        spec_for_size,
    )
    from fedunlearn.models.delta import (
        average_states,
        combine_exact,
        delta_weights,
        lora_modules,
        state_from_bytes,
        state_sha256,
        state_to_bytes,
    )
    from fedunlearn.models.device import (
        DEVICE_CHOICES,
        SMALL_MODEL_PARAMETERS,
        DeviceSpec,
        pick_device,
        set_cpu_threads,
    )
    from fedunlearn.models.export import (
        ADAPTER_CONFIG_FILE,
        ADAPTER_WEIGHTS_FILE,
        adapter_files_sha256,
        export_adapter,
        export_combined,
    )
    from fedunlearn.models.lora import (
        LoraSpec,
        get_lora_state,
        lora_state_keys,
        set_lora_state,
        wrap_lora,
    )
    from fedunlearn.models.pretrain import PretrainResult, pack_corpus, pretrain
    from fedunlearn.models.served import BASE_INFO_FILE, load_served, served_base
    from fedunlearn.models.tokenizer import (
        BOS_TOKEN,
        EOS_TOKEN,
        PAD_TOKEN,
        SPECIAL_TOKENS,
        train_tokenizer,
    )

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "BASE_INFO_FILE",
    "BOS_TOKEN",
    "BUILD_INFO_FILE",
    "BaseModel",
    "BitsPerByte",
    "DEVICE_CHOICES",
    "DefaultModelSpec",
    "DeviceSpec",
    "EOS_TOKEN",
    "LoraSpec",
    "PAD_TOKEN",
    "PretrainResult",
    "SIZES",
    "SMALL_MODEL_PARAMETERS",
    "SPECIAL_TOKENS",
    "UnigramModel",
    "adapter_files_sha256",
    "average_states",
    "bits_per_byte",
    "cache_root",
    "combine_exact",
    "default_model_dir",
    "delta_weights",
    "ensure_default_model",
    "export_adapter",
    "export_combined",
    "get_lora_state",
    "load_base_model",
    "load_served",
    "lora_modules",
    "lora_state_keys",
    "pack_corpus",
    "pick_device",
    "pretrain",
    "resolve_model_path",
    "served_base",
    "set_cpu_threads",
    "set_lora_state",
    "spec_for_size",
    "state_from_bytes",
    "state_sha256",
    "state_to_bytes",
    "train_tokenizer",
    "wrap_lora",
]

__getattr__, __dir__ = lazy_package(__name__, _WHERE, __all__)
