"""Named points where a crash must leave a run that the same command completes (fault injection).

Long multi-step operations (an erasure: journal, switch, mark, certify) call :func:`reached` at
each boundary between durable steps. Nothing happens unless a hook is installed: the crash tests
install one that kills the process (``os._exit``) at a chosen point, then check that rerunning the
same command finishes the operation with one certificate and a run that verifies.

Points of a certified erasure, in order (see :mod:`fedunlearn.unlearning.service`):

=========================  ================================================================
``request.logged``         a request is authorized and logged (the first of several carried out
                           together); the erasure not yet journaled
``erasure.authorized``     every request is logged and the erasure journaled as pending; nothing
                           else changed
``erasure.journaled``      the new adapters are stored and the journal written
``erasure.switched``       the shard heads are switched and the served model exported
``erasure.marked``         the subjects are marked erased; the journal not yet cleared
``erasure.unlearned``      the unlearner returned; nothing certified yet
``certify.applied``        the ``erasure-applied`` event is logged; no certificate yet
``certify.written``        a certificate is written (one per request); the pending mark not yet cleared
``data.logged``            the ``data-removed`` event of an erased organization whose records a
                           simulation saved in ``RUN/data`` is logged; the records not yet deleted
=========================  ================================================================
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["POINTS", "install", "reached"]

POINTS = ("request.logged", "erasure.authorized", "erasure.journaled", "erasure.switched", "erasure.marked", "erasure.unlearned",
          "certify.applied", "certify.written", "data.logged")
_HOOK: list[Callable[[str], None] | None] = [None]


def install(hook: Callable[[str], None] | None) -> None:
    """Call ``hook(point)`` at every point reached from now on (``None`` removes it)."""
    _HOOK[0] = hook


def reached(point: str) -> None:
    """Mark that ``point`` (one of :data:`POINTS`) was reached."""
    hook = _HOOK[0]
    if hook is not None:
        hook(point)
