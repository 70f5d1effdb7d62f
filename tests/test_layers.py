"""Imports point one way (DESIGN.md, "Layers"): read from the source with ``ast``, no import runs.

``fedunlearn`` never imports the front ends (``clients/``, ``server/``, ``benchmarks/``); a module
never imports a package of a higher layer; ``audit/`` uses nothing of fedunlearn but ``errors``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fedunlearn

ROOT = Path(fedunlearn.__file__).parent
#: Layer of each top-level unit of the package (higher may import lower or equal, never higher).
LAYERS = {
    "errors": 0, "progress": 0, "registry": 0, "interrupt": 0, "crashpoints": 0, "lazy": 0,
    "audit": 1, "data": 1, "ledger": 1, "config": 1, "runs": 1,
    "certify": 2, "models": 2,
    "training": 3,
    "federation": 4,
    "unlearning": 5,
    "deploy": 6, "evaluate": 6,
    "cli": 7,
}
FRONT_ENDS = ("clients", "server", "benchmarks")


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imported(path: Path):
    """Every module an absolute import in the file at ``path`` names."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _imports():
    """(importing module, its unit, imported module) for every absolute import in the package."""
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        for name in _imported(path):
            yield module, _unit(module), name


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()  # packages, namespace ones included
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and any(p.glob("*.py")))}
    assert units == set(LAYERS), "place the new module in LAYERS (and DESIGN.md's layer table)"


def test_imports_point_down_only():
    wrong = []
    for module, unit, name in _imports():
        top = name.split(".")[0]
        if top in FRONT_ENDS:
            wrong.append(f"{module} imports the front end {name}")
        if top != "fedunlearn" or not unit:
            continue
        target = _unit(name)
        if target and LAYERS[target] > LAYERS[unit]:
            wrong.append(f"{module} (layer {LAYERS[unit]}, {unit}) imports {name} (layer {LAYERS[target]}, {target})")
        if unit == "audit" and target not in ("audit", "errors", ""):
            wrong.append(f"{module}: audit/ must stay self-contained, imports {name}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("source, expected", [
    ("from fedunlearn.unlearning import EraseRequest", "imports fedunlearn.unlearning"),
    ("import clients.app", "front end clients.app"),
])
def test_the_check_catches_a_violation(tmp_path, source, expected):
    fake = tmp_path / "fedunlearn"
    (fake / "training").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "training" / "__init__.py").write_text("")
    (fake / "training" / "bad.py").write_text(source + "\n")
    globals_ = globals()
    old = globals_["ROOT"]
    globals_["ROOT"] = fake
    try:
        with pytest.raises(AssertionError, match=expected):
            test_imports_point_down_only()
    finally:
        globals_["ROOT"] = old


def _front_end_imports(folder: Path):
    """(file, imported module) for every import of a front end (``clients``/``server``) in `folder`."""
    for path in sorted(folder.glob("*.py")):
        yield from ((path.name, n) for n in _imported(path) if n.split(".")[0] in ("clients", "server"))


def test_benchmarks_use_the_library_not_the_flower_apps():
    """Benchmarks measure what the library does; they reach the ClientApp the way ``forget`` does
    (``fedunlearn.federation.inprocess.inprocess_grid``), never by importing ``clients/``."""
    wrong = [f"benchmarks/{f} imports {n}" for f, n in _front_end_imports(ROOT.parent / "benchmarks")]
    assert wrong == [], "\n".join(wrong)


def test_the_benchmark_check_catches_a_violation(tmp_path):
    (tmp_path / "bench_x.py").write_text("def f():\n    from clients.app import make_app\n")
    assert list(_front_end_imports(tmp_path)) == [("bench_x.py", "clients.app")]


@pytest.mark.parametrize("module", ["fedunlearn.federation.inbox", "fedunlearn.certify.authorize", "fedunlearn.cli",
                                    "fedunlearn.evaluate.before"])
def test_quick_commands_do_not_load_the_heavy_libraries(module):
    """``fedunlearn requests``, ``keys`` and ``--help`` answer in a fraction of a second: importing
    what they need loads neither torch nor Opacus, transformers, peft or Flower (the packages'
    ``__init__`` import their modules lazily; see ``fedunlearn/certify/__init__.py``)."""
    import subprocess
    import sys

    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('torch', 'opacus', 'transformers', 'peft', 'flwr') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_public_function_named_like_its_module_stays_the_function():
    """``fedunlearn.certify`` loads its modules lazily; the module ``verify_run`` loaded first must
    not shadow the function ``verify_run`` (the import system sets submodules on their package)."""
    import subprocess
    import sys

    code = ("import fedunlearn.certify.verify_run, inspect; from fedunlearn.certify import verify_run; "
            "print(inspect.isfunction(verify_run))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


def test_an_erasure_that_trains_nothing_does_not_load_opacus_or_peft():
    """The erasure engine imports Opacus (DP-SGD) and peft (LoRA wrapping) where they are used, so
    ``fedunlearn forget --method drop`` does not pay seconds of imports for them."""
    import subprocess
    import sys

    code = ("import sys, fedunlearn.unlearning, fedunlearn.unlearning.service; "
            "print(sorted(m for m in ('opacus', 'peft', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
