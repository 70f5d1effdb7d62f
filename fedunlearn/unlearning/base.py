"""The unlearning contract: an erase request, the federation it runs on, and its result.

Every method is an :class:`Unlearner` registered by a lowercase name (see
:mod:`fedunlearn.unlearning`). ``unlearn(request, federation)`` removes the request's subjects
from the served model and returns an :class:`UnlearnResult`: the new served model, what was
recomputed, who took part, the :class:`Cost` of the erasure and of full retraining, and the kind
of guarantee (``exact``: the lineage proves the subjects are absent; ``certified``: an (ε, δ)
bound with stated assumptions; ``empirical``: audits only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from fedunlearn.config import is_canary
from fedunlearn.errors import ConfigError, FederationError, RunStateError, UnknownNameError
from fedunlearn.federation.coordinator import Coordinator
from fedunlearn.ledger import Ledger
from fedunlearn.progress import LogReporter, Reporter
from fedunlearn.runs import RunFolder

__all__ = [
    "Cost",
    "EraseRequest",
    "Federation",
    "GUARANTEES",
    "UnlearnResult",
    "Unlearner",
    "check_request",
]

GUARANTEES = ("exact", "certified", "empirical")
"""Guarantee kinds, strongest first."""


@dataclass(frozen=True)
class EraseRequest:
    """Who is to be forgotten, how, and at whose request.

    Attributes
    ----------
    subjects : tuple[str, ...]
        Organizations to erase (at least one; sorted and unique after construction).
    method : str
        Registered unlearning method, e.g. ``"sisa"``.
    records : tuple[str, ...]
        Record ids for record-level methods; organization-level methods refuse a non-empty value.
    requested_by : str
        Free text for the audit trail (who asked), never personal data.
    options : tuple of (str, value) pairs
        Method parameters (e.g. ``{"damping": 0.01}`` for ``influence``; see
        :class:`~fedunlearn.unlearning.approx.ApproxOptions`); a mapping is accepted and stored sorted.
    """

    subjects: tuple[str, ...]
    method: str = "sisa"
    records: tuple[str, ...] = ()
    requested_by: str = ""
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        subjects = (self.subjects,) if isinstance(self.subjects, str) else tuple(self.subjects)
        if not subjects or not all(isinstance(s, str) and s for s in subjects):
            raise ConfigError(
                f"erase request subjects {self.subjects!r} are invalid: expected one or more "
                "organization names, e.g. ('org-1',)"
            )
        object.__setattr__(self, "subjects", tuple(sorted(set(subjects))))
        object.__setattr__(self, "records", tuple(self.records))
        object.__setattr__(self, "method", str(self.method).lower())
        options = self.options.items() if isinstance(self.options, Mapping) else self.options
        object.__setattr__(self, "options", tuple(sorted((str(k), v) for k, v in options)))

    @classmethod
    def from_authorization(cls, authorization: Any, *, options: Mapping[str, Any] | None = None) -> EraseRequest:
        """The request an authorized, signed request (:class:`~fedunlearn.certify.Authorization`) asks for."""
        return cls(subjects=tuple(authorization.subjects), method=authorization.method,
                   records=tuple(authorization.records),
                   requested_by=f"{authorization.signer_role} key {authorization.key_id}", options=dict(options or {}))


@dataclass(frozen=True)
class Cost:
    """What an erasure (or full retraining) costs.

    Attributes
    ----------
    client_steps : int
        Optimizer steps run by organizations, summed.
    wall_seconds : float
        Wall-clock time on the server, end to end.
    rounds : int
        Federated rounds (distinct round numbers) in which someone trained.
    aggregations : int
        Shard-rounds aggregated (``rounds`` × shards that trained in them).
    bytes_sent : int
        Adapter bytes sent both ways (server → organization and back).
    organizations : tuple[str, ...]
        Organizations that had to take part, sorted.
    estimated : bool
        ``True`` when the figures were estimated from the ledger instead of measured.
    basis : str
        How the figures were obtained (one line).
    """

    client_steps: int = 0
    wall_seconds: float = 0.0
    rounds: int = 0
    aggregations: int = 0
    bytes_sent: int = 0
    organizations: tuple[str, ...] = ()
    estimated: bool = False
    basis: str = "measured"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["organizations"] = list(self.organizations)
        return d


@dataclass(frozen=True)
class UnlearnResult:
    """What an erasure did.

    Attributes
    ----------
    method, subjects, guarantee
        The request's method and subjects; ``guarantee`` is one of :data:`GUARANTEES`.
    served_hash, served_path
        The new served model (sha256 of the combined adapter state) and its exported folder.
    previous_served_hash
        The served model before the erasure (``None`` if none was recorded).
    heads
        Shard -> hash of its head adapter after the erasure.
    recomputed
        Shard -> rounds recomputed (empty tuple: rolled back only, no training).
    organizations
        Organizations that took part (trained) in the erasure.
    cost, full_retrain_cost
        Cost of this erasure; of retraining everything without the subjects (measured when the
        method is ``retrain``, else estimated from the ledger and labelled so).
    """

    method: str
    subjects: tuple[str, ...]
    guarantee: str
    served_hash: str
    served_path: Path
    previous_served_hash: str | None
    heads: dict[int, str]
    recomputed: dict[int, tuple[int, ...]]
    organizations: tuple[str, ...]
    cost: Cost
    full_retrain_cost: Cost
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (paths as strings, shard keys as strings)."""
        return {
            "method": self.method, "subjects": list(self.subjects), "guarantee": self.guarantee,
            "served_hash": self.served_hash, "served_path": str(self.served_path),
            "previous_served_hash": self.previous_served_hash,
            "heads": {str(k): v for k, v in sorted(self.heads.items())},
            "recomputed": {str(k): list(v) for k, v in sorted(self.recomputed.items())},
            "organizations": list(self.organizations), "cost": self.cost.to_dict(),
            "full_retrain_cost": self.full_retrain_cost.to_dict(), "notes": list(self.notes),
        }


@dataclass
class Federation:
    """What an unlearner works on: the run, its open ledger and, when training is needed, a grid.

    ``grid`` may be ``None`` for erasures that train nothing (an S = N adapter drop); asking for a
    :meth:`coordinator` then raises :class:`FederationError`.
    """

    run: RunFolder
    ledger: Ledger
    grid: Grid | None = None
    reporter: Reporter = field(default_factory=LogReporter)
    audit: Any = None  # the run's open RunAudit: replayed rounds get DP histories and log budget refusals

    def coordinator(self, organizations: Sequence[str]) -> Coordinator:
        """A coordinator connected to exactly ``organizations`` (nobody else is sent work)."""
        if self.grid is None:
            raise FederationError(
                f"this erasure must retrain with organizations {sorted(organizations)} but runs without "
                "a Flower grid: run it through fedunlearn.unlearning.service.simulate_erasure or "
                "`fedunlearn forget`, which start Flower"
            )
        coord = Coordinator(self.grid, self.run, self.ledger, reporter=self.reporter, audit=self.audit)
        coord.connect(sorted(organizations))  # also checks they present the data they trained on
        return coord


def check_request(request: EraseRequest, ledger: Ledger, *, resuming: bool = False) -> None:
    """Refuse a request that names unknown or erased organizations, or would erase everyone.

    ``resuming``: the request completes an interrupted erasure of the same subjects, so subjects
    already marked erased are accepted. Nothing is changed either way.

    Raises
    ------
    UnknownNameError
        A subject is not an organization of the run (the message lists the valid names).
    RunStateError
        A subject was already erased, or no organization would remain.
    ConfigError
        Record ids were given to an organization-level request.
    """
    if request.records:
        raise ConfigError(
            f"method {request.method!r} erases whole organizations but the request lists "
            f"{len(request.records)} record ids; drop the record ids or use a record-level method"
        )
    orgs = {o.name: o for o in ledger.organizations()}
    for name in request.subjects:
        if is_canary(name):  # the audited units of a client-level canary audit (dp.audit-canary-orgs)
            raise ConfigError(f"{name!r} is a canary organization of the privacy audit, not an erasure subject; "
                              "erase a real organization")
        org = orgs.get(name)
        if org is None:  # list only the names this request could name: active, real organizations
            raise UnknownNameError("organization", name, [n for n, o in orgs.items()
                                                          if o.status == "active" and not is_canary(n)])
        if org.status == "erased" and not resuming:
            raise RunStateError(
                f"organization {name!r} was already erased from run {str(ledger.run_dir)!r}; nothing to "
                "do: check `fedunlearn info --run RUN_DIR` for each organization's status"
            )
    left = sorted(n for n, o in orgs.items() if o.status == "active" and n not in request.subjects)
    if not left:
        raise RunStateError(
            f"erasing {list(request.subjects)} would leave no organization in the run and nothing to "
            "serve; erase fewer organizations, or delete the run folder instead"
        )


class Unlearner(ABC):
    """An unlearning method. Subclasses set :attr:`name` and :attr:`guarantee`."""

    name: str = ""
    guarantee: str = "exact"
    level: str = "organization"  # "record": forgets request.records of one organization that stays

    def supports(self, run: RunFolder) -> str | None:
        """``None`` when this method can serve ``run``; else the reason it cannot (one sentence)."""
        return None

    def check(self, run: RunFolder) -> None:
        """Raise :class:`ConfigError` with :meth:`supports`' reason when the run is not served."""
        reason = self.supports(run)
        if reason is not None:
            raise ConfigError(f"method {self.name!r} cannot erase from run {str(run.path)!r}: {reason}")

    def needs_grid(self, request: EraseRequest, ledger: Ledger, run: RunFolder) -> bool:
        """Whether erasing ``request`` from ``run`` needs Flower (training or queries); default yes."""
        return True

    @abstractmethod
    def unlearn(self, request: EraseRequest, federation: Federation) -> UnlearnResult:
        """Remove ``request.subjects`` from the served model of ``federation.run``."""
