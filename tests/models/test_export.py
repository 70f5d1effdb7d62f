"""PEFT adapter folders: one-line loading and the exactness of the combined export."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fedunlearn.errors import ModelError
from fedunlearn.models import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    adapter_files_sha256,
    delta_weights,
    export_adapter,
    export_combined,
    get_lora_state,
    load_served,
    set_lora_state,
    wrap_lora,
)

IDS = torch.tensor([[0, 17, 42, 99, 7, 250, 3, 64]])  # [1, T]


def _logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits  # [1, T, V]


@pytest.fixture()
def states(tiny_base, small_lora, make_state):
    like = get_lora_state(wrap_lora(tiny_base, small_lora, seed=0))
    return [make_state(like, seed=s, scale=0.2) for s in (11, 12, 13)]


def test_exported_adapter_loads_in_one_line(tmp_path, tiny_base, small_lora, states):
    folder = export_adapter(
        tmp_path / "adapter", states[0], base_model_path=tiny_base.path, spec=small_lora
    )
    assert folder == tmp_path / "adapter"
    config = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == "fedunlearn/" + tiny_base.path.name  # portable, not a path
    assert (config["r"], config["lora_alpha"], config["task_type"]) == (4, 8, "CAUSAL_LM")
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]

    served = load_served(folder, base=tiny_base.path)

    trained = wrap_lora(tiny_base, small_lora, seed=0)
    set_lora_state(trained, states[0])
    torch.testing.assert_close(_logits(served), _logits(trained), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(_logits(served), _logits(tiny_base.model), atol=1e-3)


def test_combined_export_equals_base_plus_weighted_delta_sum(tmp_path, tiny_base, small_lora, states):
    weights = [0.5, 0.3, 0.2]
    folder = export_combined(
        tmp_path / "served", states, weights, base_model_path=tiny_base.path, spec=small_lora
    )
    config = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())
    assert (config["r"], config["lora_alpha"]) == (12, 24)  # S·r, S·alpha
    served = load_served(folder, base=tiny_base.path)

    # Reference: the frozen base with Σ_s w_s ΔW_s added to each adapted weight.
    reference = AutoModelForCausalLM.from_pretrained(tiny_base.path, local_files_only=True)
    deltas = [delta_weights(state, small_lora.scaling) for state in states]
    with torch.no_grad():
        for prefix in deltas[0]:
            module = reference.get_submodule(prefix.removeprefix("base_model.model."))
            module.weight += sum(w * d[prefix] for d, w in zip(deltas, weights))  # [out, in]
    torch.testing.assert_close(_logits(served), _logits(reference), atol=1e-5, rtol=1e-5)


def test_reexport_replaces_adapter_atomically(tmp_path, tiny_base, small_lora, states):
    folder = tmp_path / "adapter"
    export_adapter(folder, states[0], base_model_path=tiny_base.path, spec=small_lora)
    first = adapter_files_sha256(folder)
    export_adapter(folder, states[1], base_model_path=tiny_base.path, spec=small_lora)
    second = adapter_files_sha256(folder)
    assert first[ADAPTER_WEIGHTS_FILE] != second[ADAPTER_WEIGHTS_FILE]
    assert first[ADAPTER_CONFIG_FILE] == second[ADAPTER_CONFIG_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging leftovers


def test_export_is_deterministic(tmp_path, tiny_base, small_lora, states):
    a = export_adapter(tmp_path / "a", states[2], base_model_path=tiny_base.path, spec=small_lora)
    b = export_adapter(tmp_path / "b", states[2], base_model_path=tiny_base.path, spec=small_lora)
    assert adapter_files_sha256(a) == adapter_files_sha256(b)
    assert {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, "tokenizer.json"} <= set(adapter_files_sha256(a))


def test_the_adapter_config_cache_gives_peft_own_bytes(tmp_path, tiny_base, small_lora, states, monkeypatch):
    """adapter_config.json is written by peft on a key's first use and then read from the cache
    (importing peft costs seconds); the bytes are the same, and a damaged entry is not trusted."""
    monkeypatch.setenv("FEDUNLEARN_CACHE", str(tmp_path / "cache"))
    first = export_adapter(tmp_path / "a", states[2], base_model_path=tiny_base.path, spec=small_lora)
    [entry] = (tmp_path / "cache" / "adapter-configs").glob("*.json")
    assert entry.read_bytes() == (first / ADAPTER_CONFIG_FILE).read_bytes()
    cached = export_adapter(tmp_path / "b", states[2], base_model_path=tiny_base.path, spec=small_lora)
    assert (cached / ADAPTER_CONFIG_FILE).read_bytes() == (first / ADAPTER_CONFIG_FILE).read_bytes()
    doc = json.loads(entry.read_text())
    entry.write_text(json.dumps(doc | {"r": doc["r"] + 1}))  # damaged: peft writes it again
    again = export_adapter(tmp_path / "c", states[2], base_model_path=tiny_base.path, spec=small_lora)
    assert (again / ADAPTER_CONFIG_FILE).read_bytes() == (first / ADAPTER_CONFIG_FILE).read_bytes()


def test_refuses_to_overwrite_other_folders(tmp_path, tiny_base, small_lora, states):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(ModelError, match="not an adapter folder"):
        export_adapter(tmp_path / "precious", states[0], base_model_path=tiny_base.path, spec=small_lora)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_rank_must_match_spec(tmp_path, tiny_base, small_lora, states):
    from dataclasses import replace

    with pytest.raises(ModelError, match="rank 4 but the LoraSpec says r=8"):
        export_adapter(tmp_path / "x", states[0], base_model_path=tiny_base.path, spec=replace(small_lora, r=8))
    assert not (tmp_path / "x").exists()


def test_base_must_be_local_folder(tmp_path, small_lora, states):
    with pytest.raises(ModelError, match="never downloads"):
        export_adapter(tmp_path / "x", states[0], base_model_path=tmp_path / "missing", spec=small_lora)


def test_sha256_needs_adapter_folder(tmp_path):
    with pytest.raises(ModelError, match="not an exported adapter folder"):
        adapter_files_sha256(tmp_path)


def test_export_bytes_are_the_same_in_every_process(tmp_path, tiny_base, small_lora, states):
    """peft keeps target_modules as a set; string hashing differs per process (PYTHONHASHSEED), so
    without canonical ordering each process wrote other bytes (issue 15). Two processes with
    different hash seeds must write byte-identical adapter folders."""
    import os
    import subprocess
    import sys

    from safetensors.torch import save_file

    save_file(states[2], str(tmp_path / "state.safetensors"))
    script = (
        "import sys; from pathlib import Path; from safetensors.torch import load_file\n"
        "from fedunlearn.models import LoraSpec, export_adapter\n"
        "spec = LoraSpec(r=4, alpha=8, target_modules=('v_proj', 'q_proj'))\n"
        "export_adapter(Path(sys.argv[1]), load_file(sys.argv[2]), base_model_path=Path(sys.argv[3]), spec=spec)\n"
    )
    digests = []
    for seed in ("1", "2", "3"):
        out = tmp_path / f"out-{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "state.safetensors"),
                        str(tiny_base.path)], check=True, env=env)
        digests.append(adapter_files_sha256(out))
        config = json.loads((out / ADAPTER_CONFIG_FILE).read_text())
        assert config["target_modules"] == ["q_proj", "v_proj"]
    assert digests[0] == digests[1] == digests[2]


def test_an_export_loads_from_another_cache_on_another_machine(tmp_path, tiny_base, small_lora, states, monkeypatch):
    """The adapter names its base portably; a copy of the base in another cache serves it, a base with
    other weights is refused, a missing one says how to get it."""
    import shutil

    from fedunlearn.errors import ModelError
    from fedunlearn.models import BASE_INFO_FILE, served_base

    folder = export_adapter(tmp_path / "adapter", states[0], base_model_path=tiny_base.path, spec=small_lora)
    info = json.loads((folder / BASE_INFO_FILE).read_text())
    assert info["name"] == "fedunlearn/" + tiny_base.path.name and len(info["weights_sha256"]) == 64
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "served")  # the adapter, copied away
    other_cache = tmp_path / "other-machine-cache"
    monkeypatch.setenv("FEDUNLEARN_CACHE", str(other_cache))
    with pytest.raises(ModelError, match="not in this machine's cache.*pass base=FOLDER"):
        served_base(moved)
    shutil.copytree(tiny_base.path, other_cache / "models" / tiny_base.path.name)
    assert served_base(moved) == other_cache / "models" / tiny_base.path.name
    served = load_served(moved)  # no base named: found in this machine's cache
    trained = wrap_lora(tiny_base, small_lora, seed=0)
    set_lora_state(trained, states[0])
    torch.testing.assert_close(_logits(served), _logits(trained), atol=1e-6, rtol=1e-6)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(served_base(moved)), str(moved))
    torch.testing.assert_close(_logits(plain), _logits(trained), atol=1e-6, rtol=1e-6)  # plain peft, same
    weights = other_cache / "models" / tiny_base.path.name / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # another base under the same name
    with pytest.raises(ModelError, match="other weights"):
        served_base(moved)


def test_the_same_adapter_exports_the_same_bytes_from_any_cache_location(tmp_path, tiny_base, small_lora, states):
    import shutil

    from fedunlearn.models import adapter_files_sha256

    copy = shutil.copytree(tiny_base.path, tmp_path / "cache2" / "models" / tiny_base.path.name)
    one = export_adapter(tmp_path / "a", states[0], base_model_path=tiny_base.path, spec=small_lora)
    two = export_adapter(tmp_path / "b", states[0], base_model_path=copy, spec=small_lora)
    for name in ("adapter_config.json", "fedunlearn_base.json", "adapter_model.safetensors"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
