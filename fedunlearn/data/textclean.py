"""Turn documentation files into clean prose paragraphs.

Documentation mixes prose with code, tables, option lists and markup. Language-model pre-training
and the real-text scenario want prose: sentences a person wrote for a person. The rules here are
deliberately plain and deterministic:

* a paragraph is a block of lines separated by blank lines, with its whitespace collapsed;
* it is kept when it reads like prose: 8 to 120 words, at least 85% letters, spaces and ordinary
  punctuation, few code symbols, starts with a capital letter or a quote, and ends like a sentence;
* markup is removed first: roff requests and font escapes (manual pages), POD commands and
  formatting codes (Perl), reST/Markdown roles and inline literals.
"""

from __future__ import annotations

import re

__all__ = ["is_prose", "pod_paragraphs", "prose_paragraphs", "roff_paragraphs"]

_MIN_WORDS = 8
_MAX_WORDS = 120
_CODE_CHARS = set("{}[]=<>_\\|#$@^~`*;")
_PLAIN = re.compile(r"[A-Za-z ,.;:'\"()!?%-]")
_URL = re.compile(r"https?://\S+|www\.\S+")


def is_prose(paragraph: str) -> bool:
    """Whether a whitespace-normalized paragraph reads like prose (see the module rules)."""
    words = paragraph.split()
    if not _MIN_WORDS <= len(words) <= _MAX_WORDS:
        return False
    if not (paragraph[0].isupper() or paragraph[0] in "\"'"):
        return False
    if paragraph[-1] not in ".!?\"')":
        return False
    if ">>>" in paragraph or "::" in paragraph or _URL.search(paragraph):
        return False
    plain = len(_PLAIN.findall(paragraph))
    if plain < 0.85 * len(paragraph):
        return False
    code = sum(ch in _CODE_CHARS for ch in paragraph)
    if code > 0.01 * len(paragraph) + 1:
        return False
    # Mostly words of letters: rejects tables, option lists and identifier soup.
    wordlike = sum(1 for w in words if w.strip(",.;:()\"'!?").isalpha())
    return wordlike >= 0.75 * len(words)


def _blocks(text: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip():
            # An indented line after prose starts a code block or a list: keep blocks apart.
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return out


_REST_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``([^`]*)``|`([^`]*)`")
_MD_EMPH = re.compile(r"\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*")


def _unmark(text: str) -> str:
    text = _REST_ROLE.sub(r"\1", text)
    text = _LITERAL.sub(lambda m: m.group(1) or m.group(2) or "", text)
    text = _MD_EMPH.sub(lambda m: m.group(1) or m.group(2) or "", text)
    return text


def prose_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of plain text, reST or Markdown, in order.

    Parameters
    ----------
    text : str
        Any text; paragraphs are separated by blank lines.

    Returns
    -------
    list of str
        Whitespace-normalized paragraphs that pass :func:`is_prose`.
    """
    out = []
    for block in _blocks(text):
        paragraph = re.sub(r"\s+", " ", _unmark(block)).strip()
        if paragraph and is_prose(paragraph):
            out.append(paragraph)
    return out


# roff (man pages): requests that start a new paragraph, and those whose arguments are text.
_ROFF_BREAK = {"PP", "P", "LP", "SH", "SS", "TP", "IP", "HP", "sp", "br", "RS", "RE", "nf", "fi",
               "TH", "EX", "EE", "TS", "TE", "in", "ti", "ne", "bp", "Sh", "Ss", "Pp", "Bl", "El", "It"}
_ROFF_TEXT = {"B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB"}
_ROFF_ESCAPE = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)|\\s[-+]?\d|\\\*(?:\(..|\[[^\]]*\]|.)|\\[&|^%:]")
_ROFF_CHARS = {r"\-": "-", r"\(em": "-", r"\(en": "-", r"\(aq": "'", r"\(lq": '"', r"\(rq": '"',
               r"\(oq": "'", r"\(cq": "'", r"\e": "\\", r"\ ": " ", r"\(bu": "", r"\(co": "(c)"}


def roff_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of a manual page written in roff (man or mdoc macros)."""
    lines: list[str] = []
    in_table = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith((".\\\"", "'\\\"", '.\\"')):
            continue
        if line.startswith((".", "'")):
            parts = line[1:].split(None, 1)
            request = parts[0] if parts else ""
            if request == "TS":
                in_table = True
            elif request == "TE":
                in_table = False
            if request in _ROFF_TEXT and len(parts) > 1:
                lines.append(parts[1].replace('"', ""))
            elif request in _ROFF_BREAK or request:
                lines.append("")
            continue
        if in_table:
            continue
        lines.append(line)
    body = "\n".join(lines)
    for escape, plain in _ROFF_CHARS.items():
        body = body.replace(escape, plain)
    body = _ROFF_ESCAPE.sub("", body)
    return prose_paragraphs(body)


_POD_CODE = re.compile(r"[A-Z]<<+\s(.*?)\s>>+|[A-Z]<([^<>]*)>")


def _pod_unmark(text: str) -> str:
    for _ in range(3):  # nested codes: B<C<x>>
        text = _POD_CODE.sub(lambda m: (m.group(1) or m.group(2) or "").split("|")[0], text)
    return text


def pod_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of Perl POD: ordinary paragraphs only, formatting codes removed."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        if not block.strip() or block.startswith((" ", "\t", "=")):
            continue  # verbatim (code) paragraphs and commands
        paragraph = re.sub(r"\s+", " ", _pod_unmark(block)).strip()
        if paragraph and is_prose(paragraph):
            out.append(paragraph)
    return out
