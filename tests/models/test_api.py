"""The public API of fedunlearn.models stays exported and sorted."""

from __future__ import annotations

import fedunlearn.models as models

EXPECTED = {
    "BaseModel", "DefaultModelSpec", "DeviceSpec", "LoraSpec", "adapter_files_sha256",
    "average_states", "cache_root", "combine_exact", "delta_weights", "ensure_default_model",
    "export_adapter", "export_combined", "get_lora_state", "load_base_model", "lora_modules",
    "lora_state_keys", "pick_device", "resolve_model_path", "set_lora_state", "state_from_bytes",
    "state_sha256", "state_to_bytes", "train_tokenizer", "wrap_lora",
}


def test_all_is_sorted_and_complete():
    assert models.__all__ == sorted(models.__all__)
    assert EXPECTED <= set(models.__all__)
    for name in models.__all__:
        assert getattr(models, name) is not None
