"""Real natural-language text that every machine running fedunlearn already has, no download.

fedunlearn cannot fetch a corpus from a hub, but any machine that runs it holds real English
prose: the documentation that ships with the Python interpreter and its standard library, and on
most Unix systems license texts, manual pages, package descriptions and Perl's documentation. This
module finds such text, cleans it into prose paragraphs and deduplicates it.

Each :class:`TextSource` names one kind of text (its *domain*), where it is looked for, and how a
file becomes paragraphs. :func:`gather` reads one or more sources in a deterministic order and
returns a :class:`Gathered`: the documents and a manifest (files, bytes, sha256 of the text taken,
what was missing or unreadable). Missing sources and unreadable files are reported, never fatal,
unless nothing at all was found.

The sources split into two groups that never overlap, so that a model pre-trained on one group can
be measured on text it never saw:

==================  ==========================  ============================================
source              domain                      where
==================  ==========================  ============================================
python-help         Python reference docs       ``pydoc_data.topics`` (the ``help()`` pages)
python-docstrings   Python library docs         docstrings of the standard library's modules
python-libraries    scientific Python docs      docstrings of numpy, scipy and pandas
licenses            legal                       ``/usr/share/common-licenses``, Python's and
                                                installed packages' LICENSE files
manuals             Unix command manuals        ``/usr/share/man/man1`` (roff, decompressed)
packages            software catalogue          ``/var/lib/dpkg/status`` and packages' METADATA
perl-docs           Perl documentation          ``/usr/share/perl*/**/*.pod``
==================  ==========================  ============================================

:data:`PRETRAIN_SOURCES` feed the embedded default model; :data:`ORGANIZATION_SOURCES` give the
real-text scenario's organizations (see :mod:`fedunlearn.data.realorgs`).
"""

from __future__ import annotations

import ast
import glob
import importlib.metadata
import importlib.util
import gzip
import hashlib
import logging
import os
import re
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedunlearn.data.textclean import pod_paragraphs, prose_paragraphs, roff_paragraphs
from fedunlearn.errors import ConfigError, DataError, UnknownNameError

__all__ = [
    "ORGANIZATION_SOURCES",
    "PRETRAIN_SOURCES",
    "SOURCES",
    "Gathered",
    "SourceReport",
    "TextSource",
    "gather",
    "corpus_identity",
]

_LOG = logging.getLogger(__name__)
_PYDOC_TOPICS = "<pydoc_data.topics>"


@dataclass(frozen=True)
class TextSource:
    """One kind of real text on the machine.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"licenses"``.
    domain : str
        What the text is about, for humans (``"legal"``).
    where : str
        Where it is looked for, for humans and error messages.
    files : callable
        ``() -> list[str]``: candidate files, sorted; may be empty (the source is missing).
    paragraphs : callable
        ``(path) -> list[str]``: the cleaned prose paragraphs of one file; raises ``OSError``,
        ``UnicodeDecodeError`` or ``SyntaxError`` for a file that cannot be read.
    """

    name: str
    domain: str
    where: str
    files: Callable[[], list[str]]
    paragraphs: Callable[[str], list[str]]


@dataclass(frozen=True)
class SourceReport:
    """What :func:`gather` took from one source (an entry of the manifest).

    Attributes
    ----------
    name, domain, where : str
        From the :class:`TextSource`.
    files_found, files_read, files_unreadable : int
        Candidate files, files that gave text, files that could not be read or parsed.
    documents, characters : int
        Paragraphs kept after cleaning and deduplication, and their total length.
    sha256 : str
        Hash of the kept paragraphs joined by ``"\\n\\n"`` in order ("" when none).
    unreadable_examples : tuple of str
        Up to five unreadable files with the reason.
    """

    name: str
    domain: str
    where: str
    files_found: int
    files_read: int
    files_unreadable: int
    documents: int
    characters: int
    sha256: str
    unreadable_examples: tuple[str, ...] = ()

    @property
    def missing(self) -> bool:
        """True when the source gave no text on this machine."""
        return self.documents == 0

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "domain": self.domain, "where": self.where,
            "files_found": self.files_found, "files_read": self.files_read,
            "files_unreadable": self.files_unreadable, "documents": self.documents,
            "characters": self.characters, "sha256": self.sha256,
            "unreadable_examples": list(self.unreadable_examples),
        }


@dataclass(frozen=True)
class Gathered:
    """Documents of one or more sources and the manifest of how they were found.

    Attributes
    ----------
    documents : tuple of str
        Cleaned, deduplicated prose paragraphs, source by source in the order asked.
    sources : tuple of str
        The source of each document (same length as `documents`).
    reports : tuple of SourceReport
        One per source asked for, in order.
    """

    documents: tuple[str, ...]
    sources: tuple[str, ...]
    reports: tuple[SourceReport, ...] = field(default=())

    def by_source(self, name: str) -> list[str]:
        """The documents of one source."""
        return [d for d, s in zip(self.documents, self.sources) if s == name]

    def manifest(self) -> dict[str, object]:
        """JSON-ready description: per-source reports and totals."""
        return {
            "sources": [r.as_dict() for r in self.reports],
            "documents": len(self.documents),
            "characters": sum(len(d) for d in self.documents),
            "bytes_utf8": sum(len(d.encode("utf-8")) for d in self.documents),
            "sha256": _digest(self.documents),
            "python": sys.version.split()[0],
        }


# ---------------------------------------------------------------------------------------------
# Where each source lives


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _site_packages() -> list[Path]:
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(Path(p) for p in paths if os.path.isdir(p))


#: Standard-library folders that hold tests, demos or vendored code rather than documentation.
_STDLIB_SKIP = {"test", "tests", "idlelib", "turtledemo", "ensurepip", "site-packages",
                "__pycache__", "lib2to3", "pydoc_data", "config-3", "distutils"}


def _stdlib_files() -> list[str]:
    root = _stdlib()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP and not d.startswith("config-"))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return sorted(found)


#: Installed dependencies of fedunlearn whose docstrings are pre-training text (numpy directly,
#: scipy through opacus, pandas through datasets): on every machine that runs fedunlearn.
LIBRARY_PACKAGES: tuple[str, ...] = ("numpy", "scipy", "pandas")


def _library_files() -> list[str]:
    found: list[str] = []
    for package in LIBRARY_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP)
                found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return sorted(found)


def _library_versions() -> str:
    versions = []
    for package in LIBRARY_PACKAGES:
        try:
            versions.append(f"{package}-{importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package}-absent")
    return ",".join(versions)


def _pydoc_files() -> list[str]:
    try:
        import pydoc_data.topics  # noqa: F401
    except ImportError:
        return []
    return [_PYDOC_TOPICS]


def _pydoc_paragraphs(path: str) -> list[str]:
    from pydoc_data.topics import topics

    return [p for key in sorted(topics) for p in prose_paragraphs(topics[key])]


def _docstring_paragraphs(path: str) -> list[str]:
    source = Path(path).read_text(encoding="utf-8")
    tree = ast.parse(source, filename=path)
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                texts.append(doc)
    return [p for text in texts for p in prose_paragraphs(text)]


def _license_files() -> list[str]:
    found = set(glob.glob("/usr/share/common-licenses/*"))
    found.update(glob.glob(str(_stdlib() / "LICENSE.txt")))
    for site in _site_packages():
        for pattern in ("*.dist-info/LICEN[CS]E*", "*.dist-info/licenses/**/*", "*.dist-info/COPYING*"):
            found.update(glob.glob(str(site / pattern), recursive=True))
    return sorted(p for p in found if os.path.isfile(p))


def _text_paragraphs(path: str) -> list[str]:
    return prose_paragraphs(_read_text(path))


def _man_files() -> list[str]:
    return sorted(p for p in glob.glob("/usr/share/man/man1/*") if os.path.isfile(p))


def _man_paragraphs(path: str) -> list[str]:
    return roff_paragraphs(_read_text(path))


_DPKG_STATUS = "/var/lib/dpkg/status"


def _package_files() -> list[str]:
    found = [_DPKG_STATUS] if os.path.isfile(_DPKG_STATUS) else []
    for site in _site_packages():
        found.extend(sorted(glob.glob(str(site / "*.dist-info/METADATA"))))
    return found


def _package_paragraphs(path: str) -> list[str]:
    text = _read_text(path)
    if path == _DPKG_STATUS:
        return _dpkg_descriptions(text)
    # METADATA: RFC 822 headers, then the long description (usually Markdown or reST).
    head, _, body = text.partition("\n\n")
    summary = [line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("Summary:")]
    return prose_paragraphs("\n\n".join(summary + [body]))


def _dpkg_descriptions(text: str) -> list[str]:
    out: list[str] = []
    for stanza in text.split("\n\n"):
        lines = stanza.splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("Description:"):
                continue
            body: list[str] = []
            for cont in lines[i + 1:]:
                if not cont.startswith(" "):
                    break
                body.append("" if cont.strip() == "." else cont.strip())
            out.extend(prose_paragraphs("\n".join(body)))
            break
    return out


def _pod_files() -> list[str]:
    found = set()
    for root in sorted(glob.glob("/usr/share/perl/*")) + sorted(glob.glob("/usr/share/perl5")):
        found.update(glob.glob(os.path.join(root, "**", "*.pod"), recursive=True))
    return sorted(p for p in found if os.path.isfile(p))


def _pod_file_paragraphs(path: str) -> list[str]:
    return pod_paragraphs(_read_text(path))


def _read_text(path: str) -> str:
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


SOURCES: dict[str, TextSource] = {
    s.name: s
    for s in (
        TextSource("python-help", "Python reference documentation", "pydoc_data.topics (help() pages)",
                   _pydoc_files, _pydoc_paragraphs),
        TextSource("python-docstrings", "Python library documentation",
                   "docstrings of the standard library's modules", _stdlib_files, _docstring_paragraphs),
        TextSource("python-libraries", "scientific Python library documentation",
                   f"docstrings of {', '.join(LIBRARY_PACKAGES)}", _library_files, _docstring_paragraphs),
        TextSource("licenses", "legal", "/usr/share/common-licenses, LICENSE files of Python and packages",
                   _license_files, _text_paragraphs),
        TextSource("manuals", "Unix command manuals", "/usr/share/man/man1", _man_files, _man_paragraphs),
        TextSource("packages", "software catalogue", "/var/lib/dpkg/status, packages' METADATA",
                   _package_files, _package_paragraphs),
        TextSource("perl-docs", "Perl documentation", "/usr/share/perl*/**/*.pod", _pod_files,
                   _pod_file_paragraphs),
    )
}
#: Sources of the embedded default model's pre-training: on every machine that runs Python.
PRETRAIN_SOURCES: tuple[str, ...] = ("python-help", "python-docstrings", "python-libraries")
#: Sources of the real-text scenario's organizations: none of them is in the pre-training corpus.
ORGANIZATION_SOURCES: tuple[str, ...] = ("licenses", "manuals", "packages", "perl-docs")


def corpus_identity(sources: Sequence[str]) -> str:
    """A cheap name for what `sources` hold on this machine, for cache keys.

    The pre-training sources are fixed by the Python version (its help pages and standard
    library) and the versions of :data:`LIBRARY_PACKAGES`, so the identity is the source names
    plus those versions; the build's manifest records the exact sha256 of the text that was used.
    """
    return f"{','.join(sources)}@python-{sys.version.split()[0]},{_library_versions()}"


def _digest(documents: Sequence[str]) -> str:
    if not documents:
        return ""
    return hashlib.sha256("\n\n".join(documents).encode("utf-8")).hexdigest()


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def gather(
    sources: Sequence[str],
    *,
    max_documents: int | None = None,
    max_files: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Gathered:
    """Read, clean and deduplicate the text of `sources` on this machine.

    Parameters
    ----------
    sources : sequence of str
        Names from :data:`SOURCES`, read in this order. A document already taken (case and
        punctuation ignored) is never taken again, from any source.
    max_documents : int, optional
        Stop reading a source once it has given this many documents (files are read in sorted
        order, so a smaller limit gives a prefix of a larger one).
    max_files : int, optional
        Read at most this many files per source, spread evenly over its sorted file list (for
        sources with thousands of files, e.g. manual pages).
    progress : callable, optional
        ``(source, files_done, files_total)`` after each file.

    Returns
    -------
    Gathered

    Raises
    ------
    UnknownNameError
        If a source name is not in :data:`SOURCES`.
    DataError
        If no source gave any text (the message lists each source, where it was looked for and
        why it gave nothing).
    """
    for name in sources:
        if name not in SOURCES:
            raise UnknownNameError("text source", name, SOURCES)
    if max_documents is not None and (isinstance(max_documents, bool) or max_documents < 1):
        raise ConfigError(f"max_documents is {max_documents!r}; expected an int >= 1 or None")
    seen: set[str] = set()
    documents: list[str] = []
    owners: list[str] = []
    reports: list[SourceReport] = []
    for name in sources:
        report, kept = _gather_one(SOURCES[name], seen, max_documents, max_files, progress)
        reports.append(report)
        documents.extend(kept)
        owners.extend([name] * len(kept))
        if report.missing:
            _LOG.warning("text source %r gave no text on this machine (looked in %s)", name, report.where)
    if not documents:
        detail = "; ".join(f"{r.name}: {r.files_found} files in {r.where}, {r.files_unreadable} unreadable"
                           for r in reports)
        raise DataError(
            f"none of the text sources {list(sources)} gave any text on this machine ({detail}); "
            "install the missing documentation (e.g. the Python standard library sources) or pass "
            "your own text"
        )
    return Gathered(tuple(documents), tuple(owners), tuple(reports))


def _spread(files: list[str], limit: int | None) -> list[str]:
    if limit is None or len(files) <= limit:
        return files
    step = len(files) / limit
    return [files[int(i * step)] for i in range(limit)]


def _gather_one(source: TextSource, seen: set[str], max_documents: int | None, max_files: int | None,
                progress: Callable[[str, int, int], None] | None) -> tuple[SourceReport, list[str]]:
    files = _spread(source.files(), max_files)
    kept: list[str] = []
    read = 0
    unreadable: list[str] = []
    for index, path in enumerate(files):
        if max_documents is not None and len(kept) >= max_documents:
            break
        try:
            paragraphs = source.paragraphs(path)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError, EOFError) as exc:
            unreadable.append(f"{path}: {type(exc).__name__}: {exc}"[:200])
            continue
        took = False
        for paragraph in paragraphs:
            key = _norm(paragraph)
            if key and key not in seen:
                seen.add(key)
                kept.append(paragraph)
                took = True
                if max_documents is not None and len(kept) >= max_documents:
                    break
        read += took
        if progress is not None:
            progress(source.name, index + 1, len(files))
    report = SourceReport(
        name=source.name, domain=source.domain, where=source.where, files_found=len(files),
        files_read=read, files_unreadable=len(unreadable), documents=len(kept),
        characters=sum(len(k) for k in kept), sha256=_digest(kept),
        unreadable_examples=tuple(unreadable[:5]),
    )
    return report, kept
