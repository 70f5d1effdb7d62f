"""The README and docs/ stay true to the CLI: commands and options exist, links resolve.

Every ```bash block of README.md and docs/*.md is read; each ``fedunlearn <command> [<subcommand>]``
invocation (also ``./dev fedunlearn ...``, ``.venv/bin/fedunlearn ...`` and ``./dev demo ...``) must
name a real command, and every ``--option`` (or ``-x``) it uses must appear in that command's
``--help``, so renaming an option without updating the docs fails here. ``--help`` runs in-process
through typer's CliRunner, once per command: the whole module takes a second or two.
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from fedunlearn.cli import app

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 150

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
_OPTION = re.compile(r"^\[?(--?[A-Za-z][\w-]*)")
_SEPARATORS = {"|", "||", "&&", ";", "&", "(", ")"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def bash_blocks(path: Path) -> list[str]:
    return [m.group(2) for m in _FENCE.finditer(path.read_text(encoding="utf-8")) if m.group(1) == "bash"]


def shell_commands(block: str) -> list[list[str]]:
    """Split a bash block into simple commands (lists of tokens).

    Continuation lines are joined, comments dropped, and a line with an open quote is read together
    with the next ones; ``|``, ``&&``, ``;`` and the end of a line end a command.
    """
    commands: list[list[str]] = []
    pending = ""
    for line in block.replace("\\\n", " ").splitlines():
        pending += line + "\n"
        lexer = shlex.shlex(pending, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        pending = ""
        command: list[str] = []
        for token in tokens:
            if token in _SEPARATORS:
                commands.append(command)
                command = []
            else:
                command.append(token)
        commands.append(command)
    assert not pending, f"unbalanced quotes in a bash block: {pending!r}"
    return [c for c in commands if c]


def _is_dev(token: str) -> bool:
    return token == "./dev" or token.endswith("/dev")


def fedunlearn_arguments(tokens: list[str]) -> list[str] | None:
    """The arguments given to fedunlearn by one simple command, or None if it runs something else."""
    i = 0
    while i < len(tokens) and re.match(r"^[A-Za-z_]\w*=", tokens[i]):  # VAR=value prefixes
        i += 1
    head, following = (tokens[i], tokens[i + 1:]) if i < len(tokens) else ("", [])
    if head == "fedunlearn" or head.endswith("/fedunlearn"):
        return following
    if _is_dev(head) and following[:1] == ["fedunlearn"]:
        return following[1:]
    if _is_dev(head) and following[:1] == ["demo"]:  # ./dev demo ARGS = fedunlearn demo ARGS
        return following
    return None


@functools.lru_cache(maxsize=None)
def _root() -> click.Group:
    return typer.main.get_command(app)  # type: ignore[return-value]


@functools.lru_cache(maxsize=None)
def help_text(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "1000", "TERMINAL_WIDTH": "1000"})
    assert result.exit_code == 0, f"`fedunlearn {' '.join(path)} --help` failed:\n{result.output}"
    return result.output


def resolve(args: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """Split fedunlearn's arguments into the command path and the rest; LookupError for an unknown command."""
    command: click.Command = _root()
    path: list[str] = []
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.commands.get(name)
        if sub is None:
            where = " ".join(["fedunlearn", *path])
            raise LookupError(f"`{where} {name}`: no such command; `{where}` has {sorted(command.commands)}")
        command = sub
        path.append(name)
    return tuple(path), rest


def options_of(rest: list[str]) -> list[str]:
    """``--name`` and ``-x`` tokens (``--name=value`` and ``[--name`` too)."""
    return [m.group(1).split("=", 1)[0] for t in rest if (m := _OPTION.match(t))]


def _invocations() -> list[tuple[str, list[str]]]:
    out = []
    for page in PAGES:
        for block in bash_blocks(page):
            for tokens in shell_commands(block):
                args = fedunlearn_arguments(tokens)
                if args is not None:
                    out.append((_rel(page), args))
    return out


INVOCATIONS = _invocations()


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines, at most {MAX_README_LINES}: move material to a page in docs/")


def test_bash_blocks_are_found():
    pages = {page for page, _ in INVOCATIONS}
    assert "README.md" in pages and len(INVOCATIONS) >= 20, (
        f"only {len(INVOCATIONS)} fedunlearn invocations found in bash blocks of {sorted(pages)}")


def test_parser_reads_commands_as_a_shell_would():
    block = ("./dev fedunlearn forget --run r --org a   # --not-an-option\n"
             ".venv/bin/fedunlearn deploy run --work w -c 'x=\"#1\"' \\\n    --timeout 5 && echo --no\n"
             "X=1 fedunlearn verify --run r\n./dev demo --shards 4\nflwr run . fedunlearn --x\n")
    found = [fedunlearn_arguments(t) for t in shell_commands(block)]
    assert [f for f in found if f is not None] == [
        ["forget", "--run", "r", "--org", "a"], ["deploy", "run", "--work", "w", "-c", 'x="#1"', "--timeout", "5"],
        ["verify", "--run", "r"], ["demo", "--shards", "4"]]


@pytest.mark.parametrize("page,args", INVOCATIONS, ids=[f"{p}:{' '.join(a[:2])}" for p, a in INVOCATIONS])
def test_documented_command_and_options_exist(page, args):
    try:
        path, rest = resolve(args)
    except LookupError as e:
        pytest.fail(f"{page}: {e}")
    text = help_text(path)
    missing = [o for o in options_of(rest)
               if o != "--help" and not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text)]
    assert not missing, (f"{page}: `fedunlearn {' '.join(args)}` uses {missing}, which "
                         f"`fedunlearn {' '.join(path)} --help` does not show; fix the docs or the CLI")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return frozenset(_slug(m.group(2)) for m in _HEADING.finditer(text))


def _links() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        text = _FENCE.sub("", page.read_text(encoding="utf-8"))
        text = re.sub(r"(?<!\[)`[^`\n]*`(?!\])", "", text)  # inline code, but not a link's `text`
        out.extend((_rel(page), m.group(1)) for m in _LINK.finditer(text))
    return out


LINKS = _links()


def test_readme_links_to_docs():
    assert any(t.startswith("docs/") for p, t in LINKS if p == "README.md"), "README.md links to no page in docs/"


@pytest.mark.parametrize("page,target", LINKS, ids=[f"{p}->{t}" for p, t in LINKS])
def test_relative_link_resolves(page, target):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        return
    file_part, _, anchor = target.partition("#")
    source = ROOT / page
    dest = (source.parent / file_part).resolve() if file_part else source
    assert dest.exists(), f"{page}: link to {target!r}, but {dest} does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in anchors(dest), (f"{page}: link to {target!r}, but {dest.name} has no heading with that "
                                         f"anchor; its anchors: {sorted(anchors(dest))}")
