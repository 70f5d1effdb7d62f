"""Settings: defaults live once, flat <-> settings round trip, validation names the bad value."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from fedunlearn.config import (
    OrganizationSettings,
    Settings,
    TopologySettings,
    TrainSettings,
    default_flat_config,
    load_scenario,
    settings_from_flat,
    settings_to_flat,
)
from fedunlearn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_pyproject_config_equals_dataclass_defaults():
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert _flatten(doc["tool"]["flwr"]["app"]["config"]) == default_flat_config()


def test_flat_round_trip_of_defaults():
    assert settings_from_flat(default_flat_config()) == Settings()


def test_unknown_key_is_rejected_with_valid_keys_listed():
    with pytest.raises(ConfigError, match=r"unknown setting 'train.epochs'.*train.local-epochs"):
        settings_from_flat({"train.epochs": 3})


def test_a_misspelled_key_gets_a_suggestion_and_only_its_sections_keys():
    with pytest.raises(ConfigError) as info:
        settings_from_flat({"train.rouns": 3})
    text = str(info.value)
    assert "did you mean 'train.rounds'?" in text and "train.lr" in text and "lora.r" not in text
    with pytest.raises(ConfigError, match="valid sections"):
        settings_from_flat({"trian.rounds": 3})


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("train.rounds", 0, "train.rounds = 0"),
        ("train.lr", "fast", "train.lr = 'fast' has the wrong type"),
        ("lora.dropout", 1.5, "lora.dropout"),
        ("model.device", "tpu", "model.device = 'tpu'"),
        ("topology.shards", 9, "exceeds the 4 organizations"),
        ("topology.combine", "mean", "topology.combine"),
    ],
)
def test_bad_values_name_the_key_and_value(key, value, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        settings_from_flat({key: value})


def test_organization_lists_travel_as_strings():
    s = settings_from_flat({
        "organizations.names": "a,b,c",
        "organizations.join-rounds": "c=2",
        "organizations.shards": "a=1",
        "topology.shards": 2,
    })
    assert [o.name for o in s.organizations] == ["a", "b", "c"]
    assert s.organization("c").join_round == 2 and s.organization("a").shard == 1
    with pytest.raises(ConfigError, match="names organization 'z'"):
        settings_from_flat({"organizations.names": "a,b", "organizations.join-rounds": "z=2"})
    with pytest.raises(ConfigError, match="duplicate organization names"):
        settings_from_flat({"organizations.names": "a,a"})
    with pytest.raises(ConfigError, match="joins at round 5"):
        settings_from_flat({"organizations.names": "a,b", "organizations.join-rounds": "b=5"})


def test_example_scenario_loads():
    s = load_scenario(ROOT / "simulations" / "consortium.toml")
    assert s.topology.shards == 2
    assert s.organization("insurer-d").join_round == 3
    assert settings_from_flat(settings_to_flat(s)) == s


def test_scenario_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nrounds = 2")
    with pytest.raises(ConfigError, match="bad.toml.*not valid TOML"):
        load_scenario(bad)
    bad.write_text("[trian]\nrounds = 2\n")
    with pytest.raises(ConfigError, match="unknown top-level entry 'trian'"):
        load_scenario(bad)
    bad.write_text('[[organizations]]\nname = "a"\ncolor = "red"\n')
    with pytest.raises(ConfigError, match="organization #1 has keys"):
        load_scenario(bad)


def test_scenario_relative_paths_resolve_against_the_file(tmp_path):
    (tmp_path / "orgs").mkdir()
    f = tmp_path / "s.toml"
    f.write_text('[data]\ndir = "orgs"\n[[organizations]]\nname = "a"\ndata = "orgs/a"\n')
    s = load_scenario(f)
    assert s.data.dir == str((tmp_path / "orgs").resolve())
    assert s.organization("a").data == str((tmp_path / "orgs" / "a").resolve())


names = st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), min_size=1, max_size=6, unique=True)


@hsettings(max_examples=50, deadline=None)
@given(names=names, rounds=st.integers(1, 6), data=st.data())
def test_flat_round_trip_property(names, rounds, data):
    shards = data.draw(st.integers(1, len(names)))
    orgs = tuple(
        OrganizationSettings(
            name=n,
            join_round=data.draw(st.integers(1, rounds)),
            shard=data.draw(st.none() | st.integers(0, shards - 1)),
        )
        for n in names
    )
    s = Settings(organizations=orgs, train=TrainSettings(rounds=rounds), topology=TopologySettings(shards=shards))
    assert settings_from_flat(settings_to_flat(s)) == s
