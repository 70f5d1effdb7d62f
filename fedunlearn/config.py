"""Settings: frozen, validated dataclasses built from flat Flower run config or a scenario TOML.

Defaults live in the dataclass fields below and are mirrored, key for key, in
``[tool.flwr.app.config]`` of ``pyproject.toml`` (a test keeps the two equal). Flat keys are
``section.field`` in kebab-case (``train.local-epochs``); values are scalars, as Flower requires.
Organization lists travel as comma-separated strings (``organizations.names = "org-0,org-1"``).

A scenario file is the same settings written as nested TOML tables, plus an
``[[organizations]]`` array of tables (see ``simulations/consortium.toml``).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from fedunlearn.errors import ConfigError, did_you_mean

__all__ = [
    "CANARY_PREFIX",
    "DataSettings",
    "DpSettings",
    "LedgerSettings",
    "LoraSettings",
    "ModelSettings",
    "OrganizationSettings",
    "RunSettings",
    "Settings",
    "TopologySettings",
    "TrainSettings",
    "canary_names",
    "default_flat_config",
    "is_canary",
    "load_scenario",
    "settings_from_flat",
    "settings_to_flat",
]

Scalar = str | int | float | bool

CANARY_PREFIX = "canary-org-"
"""Names of the canary organizations of ``dp.audit-canary-orgs``: ``canary-org-0`` .. ``canary-org-<M-1>``."""


def canary_names(count: int) -> list[str]:
    """The names of ``count`` canary organizations (see :mod:`fedunlearn.training.canaries`)."""
    return [f"{CANARY_PREFIX}{j}" for j in range(int(count))]


def is_canary(name: str) -> bool:
    """Whether ``name`` names a canary organization (they never hold data and are never erased)."""
    return str(name).startswith(CANARY_PREFIX)


def _positive(section: str, name: str, value: float, *, zero: bool = False) -> None:
    if value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ConfigError(f"{section}.{name} = {value!r} is invalid: expected a number {bound}")


@dataclass(frozen=True)
class RunSettings:
    """Where the run lives and its global seed."""

    dir: str = ""  # run folder (ledger, blobs, exports); "" lets the CLI choose runs/<name>-<time>
    name: str = "consortium"
    seed: int = 0
    round_timeout: float = 600.0  # seconds to wait for the replies of one round
    discovery_timeout: float = 120.0  # seconds to wait for every organization's node to appear
    min_fraction: float = 1.0  # share of a round's members that must reply for it to commit
    retries: int = 1  # times a round re-asks members that did not reply, before min-fraction applies
    workflow: str = "train"  # what the ServerApp does: train | erase (erase-orgs with erase-method)
    erase_orgs: str = ""  # comma-separated organizations to erase when workflow = "erase"
    erase_method: str = "sisa"  # unlearning method of workflow = "erase"
    key_dir: str = ""  # folder of the run's keys/ and secrets/ ("" = inside the run folder); one per run, outside backups

    def __post_init__(self) -> None:
        _positive("run", "round-timeout", self.round_timeout)
        _positive("run", "discovery-timeout", self.discovery_timeout)
        if not 0.0 < self.min_fraction <= 1.0:
            raise ConfigError(f"run.min-fraction = {self.min_fraction!r} is invalid: expected a share in (0, 1], "
                              "e.g. 1.0 (every member must reply) or 0.5")
        _positive("run", "retries", self.retries, zero=True)
        if self.workflow not in ("train", "erase"):
            raise ConfigError(f"run.workflow = {self.workflow!r} is invalid: expected 'train' or 'erase'")
        if self.workflow == "erase" and not self.erase_orgs.strip():
            raise ConfigError("run.workflow = 'erase' needs run.erase-orgs: name the organizations, e.g. \"org-1\"")
        if not self.name or "/" in self.name:
            raise ConfigError(f"run.name = {self.name!r} is invalid: expected a non-empty name without '/'")


@dataclass(frozen=True)
class ModelSettings:
    """Base model: a local Hugging Face folder, or the embedded default when ``path`` is empty."""

    path: str = ""
    size: str = "small"  # the embedded default when path is empty: small | large (fedunlearn model build)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads for torch; 0 = auto (1 for models under 20M parameters, else all cores)

    def __post_init__(self) -> None:
        _positive("model", "threads", self.threads, zero=True)
        if self.size not in ("small", "large"):
            raise ConfigError(f"model.size = {self.size!r} is invalid: expected 'small' or 'large' "
                              "(the embedded default's size; ignored when model.path is set)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"model.device = {self.device!r} is invalid: expected 'auto', 'cpu' or 'cuda'")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter shape (peft ``LoraConfig``)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str = "q_proj,k_proj,v_proj,o_proj"  # comma-separated module names

    def __post_init__(self) -> None:
        _positive("lora", "r", self.r)
        _positive("lora", "alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout = {self.dropout!r} is invalid: expected 0 <= dropout < 1")
        if not self.modules:
            raise ConfigError("lora.target-modules is empty: expected module names such as 'q_proj,v_proj'")

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.target_modules.split(",") if m.strip())


@dataclass(frozen=True)
class DataSettings:
    """Organization data: a folder with one sub-folder per organization, or synthetic data."""

    dir: str = ""  # "" -> a consortium generated from run.seed (see text)
    text: str = "synthetic"  # what a generated consortium holds: synthetic (templates) | real (text on this machine)
    records_per_org: int = 120
    holdout_per_org: int = 40
    canaries_per_org: int = 3
    canary_repeats: int = 4
    canary_digits: int = 4
    never_inserted: int = 50
    public_documents: int = 400
    audit_canaries_per_org: int = 0  # one-run privacy audit canaries, each included by a keyed coin (0 = none)
    max_length: int = 64  # tokens per sequence (longer records are truncated)

    def __post_init__(self) -> None:
        for name in ("records_per_org", "holdout_per_org", "max_length", "public_documents"):
            _positive("data", name.replace("_", "-"), getattr(self, name))
        for name in ("canaries_per_org", "canary_repeats", "never_inserted", "audit_canaries_per_org"):
            _positive("data", name.replace("_", "-"), getattr(self, name), zero=True)
        if not 1 <= self.canary_digits <= 9:
            raise ConfigError(f"data.canary-digits = {self.canary_digits!r} is invalid: expected 1..9")
        if self.text not in ("synthetic", "real"):
            raise ConfigError(f"data.text = {self.text!r} is invalid: expected 'synthetic' (templated records) "
                              "or 'real' (real text found on this machine, one source per organization)")


@dataclass(frozen=True)
class TrainSettings:
    """Federated schedule and local optimisation."""

    rounds: int = 3
    local_epochs: int = 2
    batch_size: int = 16
    lr: float = 1e-2
    weight_decay: float = 0.0
    max_update_norm: float = 1000.0  # L2 norm bound of a client's update delta; larger ones are rejected (0 = none)

    def __post_init__(self) -> None:
        _positive("train", "max-update-norm", self.max_update_norm, zero=True)
        _positive("train", "rounds", self.rounds)
        _positive("train", "local-epochs", self.local_epochs)
        _positive("train", "batch-size", self.batch_size)
        _positive("train", "lr", self.lr)
        _positive("train", "weight-decay", self.weight_decay, zero=True)


@dataclass(frozen=True)
class TopologySettings:
    """Organizations split into isolated shards (S=1: plain FedAvg; S=N: one adapter each)."""

    shards: int = 1
    combine: str = "merge"  # merge (exact ΔW average of shard adapters) | ensemble
    sample_fraction: float = 1.0  # share of a shard's members sampled (seeded, per organization) to train each round

    def __post_init__(self) -> None:
        _positive("topology", "shards", self.shards)
        if not 0.0 < self.sample_fraction <= 1.0:
            raise ConfigError(f"topology.sample-fraction = {self.sample_fraction!r} is invalid: expected a share "
                              "in (0, 1], e.g. 1.0 (every member trains every round) or 0.1")
        if self.combine not in ("merge", "ensemble"):
            raise ConfigError(f"topology.combine = {self.combine!r} is invalid: expected 'merge' or 'ensemble'")


@dataclass(frozen=True)
class LedgerSettings:
    """What the lineage ledger keeps."""

    store_updates: bool = True  # keep every client update (encrypted per organization)


@dataclass(frozen=True)
class DpSettings:
    """Differential privacy, off by default.

    Record level (``record-level``): each organization trains with DP-SGD (Opacus) on its LoRA
    parameters: Poisson sampling of records with rate ``batch-size / records``, per-record
    gradients clipped to ``max-grad-norm``, Gaussian noise ``noise-multiplier * max-grad-norm``.

    Client level (``client-level``): DP-FedAvg on the server (McMahan et al., ICLR 2018). Each
    round every eligible organization of a shard is sampled independently with probability
    ``client-sample-rate``; each sampled update delta is clipped to L2 norm ``client-clip``; the
    sum gets Gaussian noise of std ``client-noise-multiplier * client-clip`` and is divided by the
    expected number of participants.

    ``max-epsilon`` (0 = no budget) stops training before any organization's ε at ``delta``
    would exceed it. ε is computed with Opacus' PRV accountant (RDP kept as a cross-check).

    ``audit-canary-orgs`` (M, 0 = none) adds M canary organizations ``canary-org-<j>`` for a
    one-run audit of client-level DP (:mod:`fedunlearn.training.canaries`,
    :mod:`fedunlearn.evaluate.canary_orgs`): each joins by a keyed coin and, instead of training,
    sends an update of norm ``audit-canary-norm`` (0 = ``client-clip``) along a secret direction.
    Canaries perturb the model: a canary audit is a separate research run, not a production setting.
    """

    record_level: bool = False
    noise_multiplier: float = 1.0  # record-level DP-SGD noise (std / max-grad-norm)
    max_grad_norm: float = 1.0  # per-record gradient clipping norm
    client_level: bool = False
    client_noise_multiplier: float = 1.0  # DP-FedAvg noise (std / client-clip)
    client_clip: float = 0.1  # L2 norm bound of each organization's update delta
    client_sample_rate: float = 1.0  # Poisson probability that an eligible organization takes part
    delta: float = 1e-5
    max_epsilon: float = 0.0  # 0 = no budget
    audit_canary_orgs: int = 0  # canary organizations of a client-level privacy audit (0 = none; a research run)
    audit_canary_norm: float = 0.0  # L2 norm of a canary organization's update (0 = client-clip)

    def __post_init__(self) -> None:
        _positive("dp", "max-grad-norm", self.max_grad_norm)
        _positive("dp", "audit-canary-orgs", self.audit_canary_orgs, zero=True)
        _positive("dp", "audit-canary-norm", self.audit_canary_norm, zero=True)
        _positive("dp", "client-clip", self.client_clip)
        _positive("dp", "max-epsilon", self.max_epsilon, zero=True)
        for name, on in (("noise_multiplier", self.record_level), ("client_noise_multiplier", self.client_level)):
            value = getattr(self, name)
            _positive("dp", name.replace("_", "-"), value, zero=True)
            if on and value == 0:
                raise ConfigError(
                    f"dp.{name.replace('_', '-')} = 0 gives no privacy (ε is infinite): expected a "
                    "value > 0, e.g. 1.0, or turn the DP level off"
                )
        if not 0.0 < self.client_sample_rate <= 1.0:
            raise ConfigError(
                f"dp.client-sample-rate = {self.client_sample_rate!r} is invalid: expected 0 < rate <= 1"
            )
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(
                f"dp.delta = {self.delta!r} is invalid: expected 0 < delta < 1, well below "
                "1 / (number of organizations or records), e.g. 1e-5"
            )

    @property
    def enabled(self) -> bool:
        return self.record_level or self.client_level


@dataclass(frozen=True)
class OrganizationSettings:
    """One organization of the consortium."""

    name: str
    join_round: int = 1
    shard: int | None = None  # None: assigned round-robin by the topology
    data: str = ""  # that organization's own data folder ("" -> data.dir/<name> or synthetic)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ",=/ \t\n"):
            raise ConfigError(
                f"organization name {self.name!r} is invalid: expected a non-empty name without "
                "spaces, ',', '=' or '/' (e.g. 'org-0' or 'st-mary-hospital')"
            )
        if self.join_round < 1:
            raise ConfigError(f"organization {self.name!r}: join-round = {self.join_round} must be >= 1")


def _default_organizations() -> tuple[OrganizationSettings, ...]:
    return tuple(OrganizationSettings(name=f"org-{i}") for i in range(4))


@dataclass(frozen=True)
class Settings:
    """Every setting of a run."""

    run: RunSettings = field(default_factory=RunSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    topology: TopologySettings = field(default_factory=TopologySettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    dp: DpSettings = field(default_factory=DpSettings)
    organizations: tuple[OrganizationSettings, ...] = field(default_factory=_default_organizations)

    def __post_init__(self) -> None:
        names = [o.name for o in self.organizations]
        if not names:
            raise ConfigError("no organizations: a consortium needs at least one organization")
        dupes = sorted(n for n, k in Counter(names).items() if k > 1)  # not names.count: O(N²) at 1000 orgs
        if dupes:
            raise ConfigError(f"duplicate organization names {dupes}: every organization needs a unique name")
        clash = sorted(n for n in names if n.startswith(CANARY_PREFIX))
        if clash:
            raise ConfigError(f"organization names {clash[:3]} start with {CANARY_PREFIX!r}, which is reserved for "
                              "the canary organizations of dp.audit-canary-orgs; rename them (e.g. 'org-3')")
        if self.topology.shards > len(names):
            raise ConfigError(
                f"topology.shards = {self.topology.shards} exceeds the {len(names)} organizations: "
                f"use at most {len(names)} shards"
            )
        for o in self.organizations:
            if o.shard is not None and not 0 <= o.shard < self.topology.shards:
                raise ConfigError(
                    f"organization {o.name!r}: shard = {o.shard} is outside 0..{self.topology.shards - 1}"
                )
            if o.join_round > self.train.rounds:
                raise ConfigError(
                    f"organization {o.name!r} joins at round {o.join_round} but train.rounds = "
                    f"{self.train.rounds}: it would never train; lower its join-round or add rounds"
                )

    @property
    def organization_names(self) -> list[str]:
        return [o.name for o in self.organizations]

    @property
    def canary_organizations(self) -> list[str]:
        """Names of the ``dp.audit-canary-orgs`` canary organizations (included or not; none by default)."""
        return canary_names(self.dp.audit_canary_orgs)

    def organization(self, name: str) -> OrganizationSettings:
        for o in self.organizations:
            if o.name == name:
                return o
        from fedunlearn.errors import UnknownNameError

        raise UnknownNameError("organization", name, self.organization_names)

    def replace(self, **sections: Any) -> Settings:
        """Return a copy with some sections or section fields replaced.

        ``settings.replace(train={"rounds": 5}, run={"dir": "x"})`` changes fields of a section;
        passing a dataclass instance replaces the section whole.
        """
        changes: dict[str, Any] = {}
        for name, value in sections.items():
            if isinstance(value, Mapping):
                changes[name] = dataclasses.replace(getattr(self, name), **value)
            else:
                changes[name] = value
        return dataclasses.replace(self, **changes)


_SECTIONS = ("run", "model", "lora", "data", "train", "topology", "ledger", "dp")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def settings_to_flat(settings: Settings) -> dict[str, Scalar]:
    """Flatten settings into Flower run-config form (dotted kebab-case keys, scalar values)."""
    flat: dict[str, Scalar] = {}
    for section in _SECTIONS:
        obj = getattr(settings, section)
        for f in fields(obj):
            flat[f"{section}.{_kebab(f.name)}"] = getattr(obj, f.name)
    orgs = settings.organizations
    flat["organizations.names"] = ",".join(o.name for o in orgs)
    flat["organizations.join-rounds"] = ",".join(f"{o.name}={o.join_round}" for o in orgs if o.join_round != 1)
    flat["organizations.shards"] = ",".join(f"{o.name}={o.shard}" for o in orgs if o.shard is not None)
    flat["organizations.data"] = ",".join(f"{o.name}={o.data}" for o in orgs if o.data)
    return flat


def default_flat_config() -> dict[str, Scalar]:
    """The flat defaults, as they must appear in ``[tool.flwr.app.config]``."""
    return settings_to_flat(Settings())


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    kind = annotation if annotation in (int, float, bool, str) else None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    expected = kind.__name__ if kind else str(annotation)
    raise ConfigError(f"{key} = {value!r} has the wrong type: expected {expected}")


def _pairs(key: str, text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in str(text).split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{key} item {item!r} is malformed: expected 'name=value' pairs separated by commas")
        out[name.strip()] = value.strip()
    return out


def settings_from_flat(flat: Mapping[str, Any], *, base: Settings | None = None) -> Settings:
    """Build validated settings from a flat mapping (a Flower run config); unknown keys are rejected.

    Keys missing from ``flat`` keep the value of ``base`` (the defaults when ``base`` is None).
    """
    base = base or Settings()
    known = set(settings_to_flat(base))
    unknown = sorted(set(flat) - known)
    if unknown:
        lines = []
        for key in unknown:  # name the closest key, and list only the keys of that section
            section = key.partition(".")[0]
            same = sorted(k for k in known if k.partition(".")[0] == section)
            where = (f"valid keys in [{section}]: {', '.join(same)}" if same else
                     f"valid sections: {', '.join(sorted({k.partition('.')[0] for k in known}))}")
            lines.append(f"unknown setting {key!r}{did_you_mean(key, known)} ({where})")
        raise ConfigError("; ".join(lines))
    sections: dict[str, Any] = {}
    for section in _SECTIONS:
        obj = getattr(base, section)
        hints = get_type_hints(type(obj))
        changes = {}
        for f in fields(obj):
            key = f"{section}.{_kebab(f.name)}"
            if key in flat:
                changes[f.name] = _coerce(key, flat[key], hints[f.name])
        sections[section] = dataclasses.replace(obj, **changes)
    if "organizations.names" in flat:
        names = [n.strip() for n in str(flat["organizations.names"]).split(",") if n.strip()]
        dupes = sorted(n for n, k in Counter(names).items() if k > 1)
        if dupes:
            raise ConfigError(f"duplicate organization names {dupes}: every organization needs a unique name")
        orgs = {n: OrganizationSettings(name=n) for n in names}
    else:
        orgs = {o.name: o for o in base.organizations}
    for key, attr, conv in (
        ("organizations.join-rounds", "join_round", int),
        ("organizations.shards", "shard", int),
        ("organizations.data", "data", str),
    ):
        if key not in flat:
            continue
        for name, value in _pairs(key, str(flat[key])).items():
            if name not in orgs:
                raise ConfigError(f"{key} names organization {name!r}, which is not in organizations.names {list(orgs)}")
            try:
                orgs[name] = dataclasses.replace(orgs[name], **{attr: conv(value)})
            except ValueError as exc:
                raise ConfigError(f"{key}: {name}={value!r} is invalid: expected {conv.__name__}") from exc
    return Settings(**sections, organizations=tuple(orgs.values()))


def load_scenario(path: str | Path, *, base: Settings | None = None) -> Settings:
    """Read a scenario TOML file (nested tables + ``[[organizations]]``) into settings."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"scenario file {str(path)!r} does not exist: pass a TOML file such as simulations/consortium.toml")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"scenario file {str(path)!r} is not valid TOML: {exc}") from exc
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "organizations":
            continue
        if key not in _SECTIONS or not isinstance(value, dict):
            raise ConfigError(
                f"scenario file {str(path)!r}: unknown top-level entry {key!r}{did_you_mean(key, _SECTIONS)}; expected tables "
                f"{', '.join(f'[{s}]' for s in _SECTIONS)} and [[organizations]]"
            )
        for sub, v in value.items():
            flat[f"{key}.{sub}"] = v
    for key in ("data.dir", "model.path", "run.dir", "run.key-dir"):  # relative paths are relative to the scenario file
        if flat.get(key) and isinstance(flat[key], str) and not Path(flat[key]).is_absolute():
            flat[key] = str((path.parent / flat[key]).resolve())
    if "organizations" in doc:
        org_rows = doc["organizations"]
        if not isinstance(org_rows, list) or not org_rows:
            raise ConfigError(f"scenario file {str(path)!r}: [[organizations]] must be a non-empty array of tables")
        allowed = {"name", "join-round", "shard", "data"}
        names, joins, shards, datas = [], [], [], []
        for i, row in enumerate(org_rows):
            extra = sorted(set(row) - allowed)
            if extra or "name" not in row:
                raise ConfigError(
                    f"scenario file {str(path)!r}: organization #{i + 1} has keys {sorted(row)}; "
                    f"expected 'name' and optionally {sorted(allowed - {'name'})}"
                )
            name = str(row["name"])
            names.append(name)
            if "join-round" in row:
                joins.append(f"{name}={row['join-round']}")
            if "shard" in row:
                shards.append(f"{name}={row['shard']}")
            if "data" in row:
                data = Path(str(row["data"]))
                if not data.is_absolute():
                    data = (path.parent / data).resolve()
                datas.append(f"{name}={data}")
        flat["organizations.names"] = ",".join(names)
        flat["organizations.join-rounds"] = ",".join(joins)
        flat["organizations.shards"] = ",".join(shards)
        flat["organizations.data"] = ",".join(datas)
    try:
        return settings_from_flat(flat, base=base)
    except ConfigError as exc:
        raise ConfigError(f"scenario file {str(path)!r}: {exc}") from exc
