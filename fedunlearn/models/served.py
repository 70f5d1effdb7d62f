"""Name an exported adapter's base model portably, and load exported adapters on any machine.

An exported adapter folder (:func:`~fedunlearn.models.export.export_adapter`) must load where it is
copied, not only where it was written. So ``adapter_config.json`` does not name the base model by
an absolute path into this machine's cache:

* a base model built by fedunlearn (the embedded default, any size) is named
  ``fedunlearn/default-<key>``, the name of its cache folder: the same on every machine that builds
  the same recipe;
* any other base model (``model.path``, a folder the user saved) keeps its absolute path, which is
  the user's to keep valid; :func:`load_served` takes ``base=`` to point elsewhere.

Beside it, :data:`BASE_INFO_FILE` records the name, the SHA-256 of the base weights and how to
rebuild the model. :func:`load_served` resolves the name (this machine's cache, building a
default size that is missing), refuses a base whose weights differ from the ones the adapter was
trained on, and returns the PEFT model::

    from fedunlearn.models import load_served
    model = load_served("runs/demo/export/served")          # base found or built
    model = load_served(folder, base="/models/my-base")     # or named explicitly
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from fedunlearn.errors import ModelError
from fedunlearn.models.base import load_base_model, resolve_model_path
from fedunlearn.models.default import BUILD_INFO_FILE, SIZES, cache_root, ensure_default_model
from fedunlearn.models.device import DeviceSpec

__all__ = ["BASE_INFO_FILE", "PORTABLE_PREFIX", "base_info", "load_served", "served_base"]

PORTABLE_PREFIX = "fedunlearn/"
BASE_INFO_FILE = "fedunlearn_base.json"
_WEIGHTS = "model.safetensors"


@functools.lru_cache(maxsize=8)
def _weights_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(base: Path) -> str | None:
    """SHA-256 hex of ``base/model.safetensors`` (cached per file version), or ``None`` if absent."""
    path = Path(base) / _WEIGHTS
    if not path.is_file():
        return None
    stat = path.stat()
    return _weights_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _size_of(key: str) -> str | None:
    return next((name for name, spec in SIZES.items() if spec.key() == key), None)


def base_info(base: Path) -> dict[str, str]:
    """What an adapter records about its base: portable ``name``, ``weights_sha256``, ``rebuild``."""
    base = Path(base).resolve()
    built = base.name.startswith("default-") and (base / BUILD_INFO_FILE).is_file()
    info = {"name": PORTABLE_PREFIX + base.name if built else str(base),
            "weights_sha256": weights_sha256(base) or ""}
    if built:
        size = _size_of(base.name[len("default-"):])
        info["rebuild"] = (f"fedunlearn model build --size {size}" if size else
                           f"the recipe in {BUILD_INFO_FILE} of the model folder (not a size of this fedunlearn)")
    else:
        info["rebuild"] = "a model folder the user supplied: copy it, or pass its path as base="
    return info


def served_base(folder: str | Path, base: str | Path | None = None, *, build: bool = True) -> Path:
    """The local base model folder for the exported adapter in ``folder``.

    Parameters
    ----------
    folder : path
        An exported adapter folder.
    base : path, optional
        Use this base model folder instead of the one the adapter names.
    build : bool, default True
        Build a default size that the adapter names and this machine's cache lacks.

    Raises
    ------
    ModelError
        The adapter folder is unreadable; the named base cannot be found or built; or its weights
        differ from the ones the adapter was trained on (SHA-256 in :data:`BASE_INFO_FILE`).
    """
    folder = Path(folder)
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{str(folder)!r} is not an exported adapter folder ({exc}); pass the export/served "
                         "folder of a run or the --out folder of `fedunlearn export`") from exc
    info_file = folder / BASE_INFO_FILE
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    name = str(config.get("base_model_name_or_path") or "")
    if base is not None:
        path = resolve_model_path(base)
    elif name.startswith(PORTABLE_PREFIX):
        path = cache_root() / "models" / name[len(PORTABLE_PREFIX):]
        if not path.is_dir():
            size = _size_of(name[len(PORTABLE_PREFIX) + len("default-"):])
            if size is None or not build:
                raise ModelError(
                    f"the adapter's base model {name!r} is not in this machine's cache ({cache_root() / 'models'}) "
                    f"and {'is not a size this fedunlearn version builds' if size is None else 'build=False'}; "
                    f"rebuild it ({info.get('rebuild', 'see ' + BASE_INFO_FILE)}), copy its folder into the cache "
                    "(or set FEDUNLEARN_CACHE), or pass base=FOLDER"
                )
            path = ensure_default_model(SIZES[size])
    else:
        try:
            path = resolve_model_path(name)
        except ModelError as exc:
            raise ModelError(f"the adapter's base model folder {name!r} is not on this machine ({exc}); pass "
                             "base=FOLDER with a copy of it") from None
    want = info.get("weights_sha256")
    have = weights_sha256(path)
    if want and have and want != have:
        raise ModelError(
            f"base model {str(path)!r} has other weights (sha256 {have[:16]}…) than the one the adapter was "
            f"trained on ({want[:16]}…); an adapter only means something on its own base: "
            f"{info.get('rebuild', 'use that base')}"
        )
    return Path(path)


def load_served(folder: str | Path, *, base: str | Path | None = None, device: DeviceSpec | None = None):
    """Load an exported adapter on its base model: a ``peft.PeftModel`` in eval mode.

    See :func:`served_base` for how the base is found (and checked); ``device`` as in
    :func:`~fedunlearn.models.load_base_model`.
    """
    from peft import PeftModel

    loaded = load_base_model(served_base(folder, base), device=device)
    model = PeftModel.from_pretrained(loaded.model, str(folder))
    model.eval()
    return model
