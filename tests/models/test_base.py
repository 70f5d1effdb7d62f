"""resolve_model_path and load_base_model: local folders only, frozen weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fedunlearn.models.base as base_module
from fedunlearn.errors import ModelError
from fedunlearn.models import DefaultModelSpec, load_base_model, pick_device, resolve_model_path


@pytest.mark.parametrize("empty", [None, "", "   "])
def test_empty_path_means_default_model(empty, monkeypatch, tiny_model_dir):
    seen = []

    def fake_ensure(spec):
        seen.append(spec)
        return tiny_model_dir

    monkeypatch.setattr(base_module, "ensure_default_model", fake_ensure)
    custom = DefaultModelSpec(seed=5)
    assert resolve_model_path(empty, spec=custom) == tiny_model_dir.resolve()
    assert resolve_model_path(empty) == tiny_model_dir.resolve()
    assert seen == [custom, DefaultModelSpec()]


def test_missing_folder_is_named_and_never_downloaded(tmp_path):
    with pytest.raises(ModelError, match="never downloads") as info:
        resolve_model_path("meta-llama/Llama-3.2-1B")
    assert "meta-llama/Llama-3.2-1B" in str(info.value)
    with pytest.raises(ModelError, match=str(tmp_path / "nope")):
        load_base_model(tmp_path / "nope")


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model_path(tmp_path)


def test_wrong_type_is_refused():
    with pytest.raises(ModelError, match="expected a str or Path"):
        resolve_model_path(42)  # type: ignore[arg-type]


def test_folder_without_weights_is_model_error(tmp_path, tiny_model_dir):
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(ModelError, match="cannot load a causal LM"):
        load_base_model(tmp_path, device=pick_device("cpu"))


def test_loaded_model_is_frozen_and_padded(tiny_base, tiny_model_dir):
    assert tiny_base.path == tiny_model_dir.resolve()
    assert not tiny_base.model.training
    assert not any(p.requires_grad for p in tiny_base.model.parameters())
    assert all(p.dtype == torch.float32 for p in tiny_base.model.parameters())
    assert tiny_base.tokenizer.pad_token_id is not None
    assert tiny_base.model.config.pad_token_id == tiny_base.tokenizer.pad_token_id


def test_save_pretrained_folder_loads_back(tmp_path, tiny_base):
    """A user-provided folder (any save_pretrained output) goes through from_pretrained."""
    folder = tmp_path / "my-model"
    tiny_base.model.save_pretrained(folder)
    tiny_base.tokenizer.save_pretrained(folder)
    loaded = load_base_model(str(folder), device=pick_device("cpu"))
    assert loaded.path == folder.resolve()
    ids = tiny_base.tokenizer("A river in spring", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = tiny_base.model(input_ids=ids).logits  # [1, T, V]
        actual = loaded.model(input_ids=ids).logits
    assert torch.equal(actual, expected)


def test_missing_pad_token_falls_back_to_eos(tmp_path, tiny_base):
    folder = tmp_path / "no-pad"
    tiny_base.model.save_pretrained(folder)
    tiny_base.tokenizer.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = load_base_model(folder, device=pick_device("cpu"))
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token


def test_accepts_path_objects_with_user_home(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("HOME", str(Path(tiny_model_dir).parent))
    assert resolve_model_path(f"~/{tiny_model_dir.name}") == tiny_model_dir.resolve()
