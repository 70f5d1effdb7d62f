"""``fedunlearn verify`` and ``fedunlearn keys``: audit a run; make keys and signed erasure requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from fedunlearn.cli._app import app, console, err_console, fail
from fedunlearn.errors import FedUnlearnError

keys_app = typer.Typer(help="Ed25519 keys of organizations and coordinators; signed erasure requests.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@app.command()
def verify(
    run: Path = typer.Option(..., "--run", help="Run folder."),
    certificate: Optional[list[Path]] = typer.Option(None, "--certificate", help="Certificate file(s) to check "
                                                     "(default: every RUN/certificates/*.json)."),
    public_key: Optional[Path] = typer.Option(None, "--public-key", help="The coordinator's pinned (first) verifier "
                                              "key; attested rotations in the log are followed (default: "
                                              "RUN/audit.pub, which only shows self-consistency)."),
    export: Optional[Path] = typer.Option(None, "--export", help="Also check a copy of the served adapter "
                                          "(e.g. `fedunlearn export --out DIR`, or one copied to another "
                                          "machine): every file must hash to the last logged export."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check the audit log, its signed checkpoints, certificates and exported artifacts; exit 1 on any failure."""
    from fedunlearn.certify.verify_run import verify_export_copy, verify_run

    try:
        report = verify_run(run, public_key=public_key, certificates=list(certificate) if certificate else None)
        if export is not None:
            verify_export_copy(run, export, report)
    except FedUnlearnError as exc:
        fail(exc)
        return
    if as_json:
        console.print_json(json.dumps({"ok": report.ok, "problems": report.problems, "checked": report.checked}))
    else:
        if public_key is None:
            err_console.print("[yellow]note:[/] using RUN/audit.pub; pass --public-key with a key obtained out of band")
        for line in report.checked:
            console.print(f"[green]ok[/]    {line}")
        for line in report.problems:
            console.print(f"[bold red]FAIL[/]  {line}", soft_wrap=True)
        console.print("[bold green]verified[/]" if report.ok else f"[bold red]{len(report.problems)} problem(s)[/]")
    if not report.ok:
        raise typer.Exit(code=1)


@keys_app.command("generate")
def keys_generate(
    name: str = typer.Option(..., "--name", help="Key name, e.g. 'hospital-a.example/erasure'."),
    out: Path = typer.Option(..., "--out", help="Folder for NAME.pem (private, 0600) and NAME.pub."),
    stem: str = typer.Option("", "--stem", help="File name stem (default: the last part of --name)."),
) -> None:
    """Generate an Ed25519 key pair (an organization's request key, or a coordinator key)."""
    from fedunlearn.audit import generate_signing_key, save_private_key, save_public_key

    try:
        key = generate_signing_key(name)
        out.mkdir(parents=True, exist_ok=True)
        base = stem or name.rstrip("/").split("/")[-1]
        private = save_private_key(key, out / f"{base}.pem")
        public = save_public_key(key, out / f"{base}.pub")
    except FedUnlearnError as exc:
        fail(exc)
        return
    console.print(f"private key {private} (keep it secret)\npublic key  {public}: {key.verifier.vkey}")


@keys_app.command("enrol")
def keys_enrol(
    run: Path = typer.Option(..., "--run", help="Run folder."),
    org: str = typer.Option(..., "--org", help="Organization name."),
    public_key: Path = typer.Option(..., "--public-key", help="The organization's .pub file."),
) -> None:
    """Enrol an organization's public key in a run (copied to RUN/org-keys/, logged, signed)."""
    from fedunlearn.audit import load_public_key, save_public_key
    from fedunlearn.certify.runaudit import RunAudit
    from fedunlearn.ledger import Ledger

    try:
        key = load_public_key(public_key)
        with Ledger.open(run) as ledger:
            o = ledger.organization(org)
        (run / "org-keys").mkdir(exist_ok=True)
        save_public_key(key, run / "org-keys" / f"{org}.pub")
        with RunAudit.open(run) as audit:
            index = audit.enrol(org, shard=o.shard, join_round=o.join_round, public_key=key)
            audit.checkpoint()
    except FedUnlearnError as exc:
        fail(exc)
        return
    console.print(f"enrolled key {key.key_id.hex()} of {org!r}" + ("" if index is None else f" (log entry {index})"))


@keys_app.command("sign-request")
def keys_sign_request(
    key: Path = typer.Option(..., "--key", help="Private key (.pem) of the subject organization or coordinator."),
    name: str = typer.Option(..., "--name", help="The key's name (as in its .pub file)."),
    run: Path = typer.Option(..., "--run", help="Run folder (its audit.pub names the run), or a run's audit.pub."),
    subject: list[str] = typer.Option(..., "--subject", help="Organization to erase (repeatable)."),
    method: str = typer.Option("sisa", "--method", help="Unlearning method."),
    out: Path = typer.Option(..., "--out", help="Where to write the signed request (JSON)."),
) -> None:
    """Sign an erasure request for a run."""
    from fedunlearn.audit import load_public_key, load_signing_key
    from fedunlearn.certify.authorize import sign_request

    try:
        origin = load_public_key(run / "audit.pub" if run.is_dir() else run).name
        signed = sign_request(load_signing_key(key, name=name), run=origin, subjects=subject, method=method)
        signed.write(out)
    except FedUnlearnError as exc:
        fail(exc)
        return
    console.print(f"signed request {signed.digest[:16]}… written to {out}")


@keys_app.command("sign-rotation")
def keys_sign_rotation(
    key: Path = typer.Option(..., "--key", help="The organization's CURRENT private key (.pem); it never leaves "
                             "this machine."),
    new_public_key: Path = typer.Option(..., "--new-public-key", help="The new .pub (`fedunlearn keys generate`)."),
    run: Path = typer.Option(..., "--run", help="Run folder, or the run's audit.pub (it names the run)."),
    out: Path = typer.Option(..., "--out", help="Where to write the rotation statement (JSON) for the coordinator."),
) -> None:
    """Sign, offline on the organization's machine, the statement that hands its key over to a new one.

    The coordinator logs it with `fedunlearn keys rotate --run RUN --org NAME --statement FILE`; the
    organization's private keys never reach the coordinator.
    """
    from fedunlearn.audit import attest_rotation, load_public_key, load_signing_key

    try:
        new_key = load_public_key(new_public_key)
        origin = load_public_key(run / "audit.pub" if run.is_dir() else run).name
        statement = attest_rotation(load_signing_key(key, name=new_key.name), new_key, origin=origin,
                                    role="organization")
        out.write_text(json.dumps({**statement, "new_public_key": new_key.vkey}, indent=2) + "\n", encoding="utf-8")
    except FedUnlearnError as exc:
        fail(exc)
        return
    console.print(f"rotation statement to key {new_key.key_id.hex()} written to {out}; the coordinator runs "
                  f"`fedunlearn keys rotate --run RUN --org NAME --statement {out}`")


def _read_statement(path: Path):
    """A statement written by `keys sign-rotation`: (statement, the new VerifierKey it names)."""
    import base64

    from fedunlearn.audit import VerifierKey
    from fedunlearn.errors import ConfigError

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"rotation statement {str(path)!r} cannot be read as JSON ({exc}); write it with "
                          "`fedunlearn keys sign-rotation`") from exc
    missing = [k for k in ("role", "old", "new", "attestation", "new_public_key") if not isinstance(doc.get(k), str)]
    if not isinstance(doc, dict) or missing:
        raise ConfigError(f"rotation statement {str(path)!r} lacks {missing or 'a JSON object'}; write it with "
                          "`fedunlearn keys sign-rotation`")
    new_key = VerifierKey.parse(doc["new_public_key"])
    if base64.b64encode(new_key.raw).decode("ascii") != doc["new"]:
        raise ConfigError(f"rotation statement {str(path)!r}: its new_public_key is not the key its signed 'new' "
                          "field names; sign the statement again")
    return {k: doc[k] for k in ("role", "old", "new", "attestation")}, new_key


@keys_app.command("rotate")
def keys_rotate(
    run: Path = typer.Option(..., "--run", help="Run folder."),
    org: Optional[str] = typer.Option(None, "--org", help="Rotate this organization's enrolled key "
                                      "(default: rotate the coordinator's signing key)."),
    key: Optional[Path] = typer.Option(None, "--key", help="With --org: the organization's CURRENT private key "
                                       "(.pem), which attests the new one."),
    new_public_key: Optional[Path] = typer.Option(None, "--new-public-key", help="With --org: the organization's "
                                                  "new .pub (`fedunlearn keys generate`)."),
    statement_file: Optional[Path] = typer.Option(None, "--statement", help="With --org, instead of --key and "
                                                  "--new-public-key: a statement the organization signed offline "
                                                  "(`fedunlearn keys sign-rotation`)."),
) -> None:
    """Rotate a signing key: the new key is logged in a key-rotation event attested by the old key.

    Without --org the coordinator's log/certificate key is replaced (a fresh key in the run's secrets);
    later checkpoints and certificates are signed with it, and `fedunlearn verify` follows the chain from
    the pinned RUN/audit.pub. With --org the organization's erasure-request key changes; requests signed
    with the old key are refused from then on. The organization either hands its current private key
    to this command (--key) or, better, signs the hand-over on its own machine (`keys sign-rotation`)
    and sends the statement (--statement).
    """
    from fedunlearn.audit import attest_rotation, load_public_key, load_signing_key, save_public_key
    from fedunlearn.certify.runaudit import RunAudit
    from fedunlearn.errors import ConfigError

    try:
        if org is None:
            if key is not None or new_public_key is not None or statement_file is not None:
                raise ConfigError("--key, --new-public-key and --statement rotate an organization's key: pass --org too")
            with RunAudit.open(run) as audit:
                old = audit.verifier
                new = audit.rotate_key()
            console.print(f"coordinator key rotated: {old.key_id.hex()} → {new.key_id.hex()} (log entry attested by "
                          f"the old key); auditors keep pinning {run / 'audit.pub'}\nnew verifier key: {new.vkey}")
            return
        if statement_file is not None:
            if key is not None or new_public_key is not None:
                raise ConfigError("--statement already names the new key and is signed by the old one: drop --key "
                                  "and --new-public-key")
            statement, new_key = _read_statement(statement_file)
        elif key is None or new_public_key is None:
            raise ConfigError("--org needs --statement (signed offline with `fedunlearn keys sign-rotation`), or "
                              "--key (the current private key) and --new-public-key (the new .pub)")
        else:
            new_key = load_public_key(new_public_key)
            statement = None
        with RunAudit.open(run) as audit:
            if statement is None:
                statement = attest_rotation(load_signing_key(key, name=new_key.name), new_key, origin=audit.origin,
                                            role="organization")
            index = audit.rotate_org_key(org, statement)
        (run / "org-keys").mkdir(exist_ok=True)
        save_public_key(new_key, run / "org-keys" / f"{org}.pub")
    except FedUnlearnError as exc:
        fail(exc)
        return
    console.print(f"key of {org!r} rotated to {new_key.key_id.hex()} (log entry {index}); requests signed with "
                  "the old key are refused from now on")
