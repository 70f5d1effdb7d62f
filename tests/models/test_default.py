"""The embedded default model: spec, cache key, deterministic cached build."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import fedunlearn.models.default as default_module
from fedunlearn.errors import ConfigError, ModelError
from fedunlearn.models import (
    BUILD_INFO_FILE,
    DefaultModelSpec,
    cache_root,
    default_model_dir,
    ensure_default_model,
    load_base_model,
    pick_device,
)

# Builds in well under a second; the session's tiny model (tests/conftest.py) covers the rest.
MICRO = DefaultModelSpec(
    vocab_size=300,
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    intermediate_size=32,
    max_positions=32,
    corpus_documents=60,
    pretrain_steps=3,
    batch_size=4,
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_key_is_stable_and_covers_every_field():
    assert DefaultModelSpec().key() == DefaultModelSpec().key()
    assert len(DefaultModelSpec().key()) == 12
    assert DefaultModelSpec(lr=0.003).key() == DefaultModelSpec(lr=3e-3).key()
    variants = [DefaultModelSpec(seed=1), DefaultModelSpec(lr=1e-3), DefaultModelSpec(num_layers=3)]
    keys = {spec.key() for spec in [DefaultModelSpec(), *variants]}
    assert len(keys) == 4


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("vocab_size", 100, "vocab_size"),
        ("hidden_size", 0, "hidden_size"),
        ("num_heads", 3, "divisible by num_heads"),
        ("hidden_size", 36, "odd"),  # 36 / 4 heads = head size 9
        ("pretrain_steps", -1, "pretrain_steps"),
        ("lr", 0.0, "lr"),
        ("lr", float("nan"), "lr"),
        ("seed", 1.5, "seed"),
    ],
)
def test_spec_validation(field, value, message):
    with pytest.raises(ConfigError, match=message):
        DefaultModelSpec(**{field: value})


def test_cache_root_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDUNLEARN_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("FEDUNLEARN_CACHE")
    assert cache_root().name == "fedunlearn"


def test_build_is_deterministic_and_complete(tmp_path):
    first = ensure_default_model(MICRO, cache_dir=tmp_path / "a", progress=False)
    second = ensure_default_model(MICRO, cache_dir=tmp_path / "b", progress=False)
    assert first == default_model_dir(MICRO, tmp_path / "a")
    assert first.name == f"default-{MICRO.key()}"
    for name in ("config.json", "model.safetensors", "tokenizer.json", BUILD_INFO_FILE):
        assert _sha(first / name) == _sha(second / name) or name == BUILD_INFO_FILE
    # No staging folder or other leftovers next to the model.
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name, f"{first.name}.lock"]


def test_other_seed_gives_other_weights(tmp_path):
    first = ensure_default_model(MICRO, cache_dir=tmp_path, progress=False)
    other = DefaultModelSpec(**{**MICRO.__dict__, "seed": 1})
    second = ensure_default_model(other, cache_dir=tmp_path, progress=False)
    assert first != second
    assert _sha(first / "model.safetensors") != _sha(second / "model.safetensors")


def test_second_call_uses_cache(tmp_path, monkeypatch):
    folder = ensure_default_model(MICRO, cache_dir=tmp_path, progress=False)
    mtime = (folder / "model.safetensors").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached model was rebuilt")

    monkeypatch.setattr(default_module, "_build", no_rebuild)
    assert ensure_default_model(MICRO, cache_dir=tmp_path, progress=False) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_concurrent_callers_build_once(tmp_path, monkeypatch):
    builds = []
    real_build = default_module._build

    def counting_build(*args, **kwargs):
        builds.append(1)
        real_build(*args, **kwargs)

    monkeypatch.setattr(default_module, "_build", counting_build)
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(ensure_default_model(MICRO, cache_dir=tmp_path, progress=False))
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert len(results) == 3 and len(set(results)) == 1


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_pretrain(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(default_module, "pretrain", broken_pretrain)
    with pytest.raises(RuntimeError, match="power cut"):
        ensure_default_model(MICRO, cache_dir=tmp_path, progress=False)
    folder = default_model_dir(MICRO, tmp_path)
    assert not folder.exists()
    assert not list(folder.parent.glob(f".{folder.name}.tmp-*"))


def test_stale_staging_folder_is_cleaned(tmp_path):
    folder = default_model_dir(MICRO, tmp_path)
    stale = folder.parent / f".{folder.name}.tmp-crashed"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    ensure_default_model(MICRO, cache_dir=tmp_path, progress=False)
    assert not stale.exists()


def test_incomplete_folder_is_refused(tmp_path):
    folder = default_model_dir(MICRO, tmp_path)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="delete the folder"):
        ensure_default_model(MICRO, cache_dir=tmp_path, progress=False)


def test_pretraining_lowers_loss(tiny_model_dir):
    info = json.loads((tiny_model_dir / BUILD_INFO_FILE).read_text())
    pretrain = info["pretrain"]
    assert pretrain["final_loss"] < pretrain["initial_loss"] - 0.5
    assert len(pretrain["step_losses"]) == info["spec"]["pretrain_steps"]
    assert pretrain["step_losses"][-1] < pretrain["step_losses"][0]


def test_built_folder_is_a_plain_hf_model(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    assert model.config.model_type == "llama"
    assert model.config.tie_word_embeddings is False
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (0, 1, 2)


def test_build_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    ensure_default_model(MICRO, cache_dir=tmp_path, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_real_corpus_build_writes_a_manifest(tmp_path):
    """MICRO reads the machine's real text: the manifest says from where, how much and its hash."""
    folder = ensure_default_model(MICRO, cache_dir=tmp_path, progress=False)
    info = json.loads((folder / BUILD_INFO_FILE).read_text())
    corpus = info["corpus"]
    assert corpus["kind"] == "real"
    assert corpus["documents"] == corpus["train_documents"] + corpus["heldout_documents"]
    assert all(s["documents"] <= MICRO.corpus_documents for s in corpus["sources"])  # per source
    taken = [s for s in corpus["sources"] if s["documents"]]
    assert taken and all(len(s["sha256"]) == 64 and s["characters"] > 0 for s in taken)
    assert info["pretrain"]["steps"] == MICRO.pretrain_steps
    assert info["pretrain"]["corpus_tokens"] > 0
    table = info["bits_per_byte"]
    rows = [row for row in table.values() if isinstance(row, dict)]
    assert rows, table
    for row in rows:  # a uniform guess over the vocabulary is never better than token frequencies
        assert row["uniform"] > row["unigram"] > 0 and row["model"] > 0


def test_synthetic_and_real_corpora_are_different_models(tmp_path):
    synthetic = DefaultModelSpec(**{**MICRO.__dict__, "corpus": "synthetic"})
    assert synthetic.key() != MICRO.key()
    with pytest.raises(ConfigError, match="corpus"):
        DefaultModelSpec(corpus="wikipedia")


def test_sizes_are_named_and_large_has_over_20m_parameters():
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedunlearn.errors import UnknownNameError
    from fedunlearn.models import SIZES, spec_for_size

    assert spec_for_size("small") == DefaultModelSpec()
    with pytest.raises(UnknownNameError, match="'large', 'small'"):
        spec_for_size("huge")
    large = SIZES["large"]
    config = LlamaConfig(vocab_size=large.vocab_size, hidden_size=large.hidden_size,
                         intermediate_size=large.intermediate_size, num_hidden_layers=large.num_layers,
                         num_attention_heads=large.num_heads, num_key_value_heads=large.num_heads,
                         max_position_embeddings=large.max_positions, tie_word_embeddings=False)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert parameters == 21_041_664  # the count the docs state


@pytest.mark.slow
def test_real_default_model_beats_unigram_on_text_it_never_saw():
    """Builds the shipped default (about 3 minutes on 2 cores, once per cache) and checks its
    manifest: on the held-out slice of its corpus and on every organization source present on this
    machine (text from outside the corpus), it predicts better than a unigram model."""
    folder = ensure_default_model(progress=False)
    info = json.loads((folder / BUILD_INFO_FILE).read_text())
    assert info["parameters"] == 1_573_504
    table = info["bits_per_byte"]
    assert "heldout-slice" in table
    others = [name for name, row in table.items() if isinstance(row, dict) and name != "heldout-slice"]
    assert len(others) >= 1, table
    for name, row in table.items():
        if isinstance(row, dict):
            assert row["model"] < 0.85 * row["unigram"] < row["uniform"], (name, row)
    base = load_base_model(folder, device=pick_device("cpu"))
    ids = base.tokenizer("Return the absolute value of the argument.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = base.model(input_ids=ids).logits  # [1, T, V]
    assert logits.shape == (1, ids.shape[1], DefaultModelSpec().vocab_size)


def test_missing_corpus_source_is_reported_and_the_build_goes_on(tmp_path, monkeypatch):
    from fedunlearn.data import realtext

    gone = realtext.TextSource("python-libraries", "docs", "/nowhere", lambda: [], realtext._docstring_paragraphs)
    monkeypatch.setitem(realtext.SOURCES, "python-libraries", gone)
    folder = ensure_default_model(MICRO, cache_dir=tmp_path, progress=False)
    sources = {s["name"]: s for s in json.loads((folder / BUILD_INFO_FILE).read_text())["corpus"]["sources"]}
    assert sources["python-libraries"]["documents"] == 0 and sources["python-libraries"]["where"] == "/nowhere"
    assert sources["python-help"]["documents"] > 0


def test_no_corpus_at_all_stops_naming_what_is_missing_and_caches_nothing(tmp_path, monkeypatch):
    from fedunlearn.data import realtext
    from fedunlearn.errors import DataError

    for name in realtext.PRETRAIN_SOURCES:
        monkeypatch.setitem(realtext.SOURCES, name, realtext.TextSource(name, "docs", f"/nowhere/{name}", lambda: [],
                                                                        realtext._docstring_paragraphs))
    with pytest.raises(DataError, match=r"python-help: 0 files in /nowhere/python-help"):
        ensure_default_model(MICRO, cache_dir=tmp_path, progress=False)
    folder = default_model_dir(MICRO, tmp_path)
    assert not folder.exists() and not list(folder.parent.glob(f".{folder.name}.tmp-*"))
