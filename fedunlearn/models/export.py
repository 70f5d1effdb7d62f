"""Export LoRA states as standard PEFT adapter folders.

An exported folder holds ``adapter_config.json`` (written by :class:`peft.LoraConfig` itself, with
``base_model_name_or_path`` naming the base portably, see :mod:`fedunlearn.models.served`),
``fedunlearn_base.json`` (that name, the base weights' SHA-256, how to rebuild the base),
``adapter_model.safetensors`` (PEFT's key names, i.e. the canonical keys) and a copy of the base
tokenizer, so that::

    model = fedunlearn.models.load_served(folder)

serves it in one line on any machine, with no hub access (plain peft works as well:
``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(served_base(folder)), folder)``).
The tokenizer copy also keeps PEFT from asking the hub whether the folder has one. Folders are written to a temporary sibling and renamed into place, so
a reader never sees a half-written adapter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from fedunlearn.errors import ModelError
from fedunlearn.models.base import resolve_model_path
from fedunlearn.models.delta import combine_exact, lora_modules
from fedunlearn.models.lora import LoraSpec
from fedunlearn.models.served import BASE_INFO_FILE, base_info

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "adapter_files_sha256",
    "export_adapter",
    "export_combined",
]

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


def export_adapter(
    folder: Path, state: Mapping[str, torch.Tensor], *, base_model_path: Path, spec: LoraSpec
) -> Path:
    """Write `state` as a PEFT LoRA adapter folder.

    Parameters
    ----------
    folder : Path
        Destination. Replaced atomically if it already holds an adapter; an existing folder with
        other content is refused.
    state : mapping of str to torch.Tensor
        Canonical LoRA state whose rank equals ``spec.r``.
    base_model_path : Path
        Local base model folder (with ``config.json`` and tokenizer files).
    spec : LoraSpec
        Rank, alpha, dropout and target modules written into ``adapter_config.json``.

    Returns
    -------
    Path
        `folder`, loadable with :func:`fedunlearn.models.load_served`.

    Raises
    ------
    ModelError
        If the state's rank differs from ``spec.r``, the base folder is invalid, or `folder`
        exists with non-adapter content.
    """
    folder = Path(folder).expanduser().absolute()
    base = resolve_model_path(base_model_path)  # ModelError unless a local model folder
    for prefix, (a, _b) in lora_modules(state).items():  # a: [r, in]
        if a.shape[0] != spec.r:
            raise ModelError(
                f"LoRA state of {prefix!r} has rank {a.shape[0]} but the LoraSpec says r={spec.r}; "
                "pass the LoraSpec the state was trained with (export_combined scales it itself)"
            )
    if folder.exists() and not _replaceable(folder):
        raise ModelError(
            f"export folder {str(folder)!r} exists and is not an adapter folder; choose a new or "
            "empty folder so that nothing else is overwritten"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        info = base_info(base)  # a portable name for fedunlearn-built bases (see models.served)
        (staging / ADAPTER_CONFIG_FILE).write_text(_adapter_config(spec, info["name"]), encoding="utf-8")
        (staging / BASE_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tensors = {
            key: state[key].detach().to("cpu", torch.float32).contiguous() for key in sorted(state)
        }
        save_file(tensors, str(staging / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
        AutoTokenizer.from_pretrained(base, local_files_only=True).save_pretrained(staging)
        _swap_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _adapter_config(spec: LoraSpec, base_name: str) -> str:
    """``adapter_config.json`` as :class:`peft.LoraConfig` writes it (canonical JSON).

    Importing peft loads transformers' modelling stack (seconds), which an erasure that trains
    nothing (``drop``) or a resumed export should not pay for a file that depends only on the spec,
    the base model's name and the peft version: the text is kept in the fedunlearn cache under a
    key of those three, and written by peft itself on the first use of a key.
    """
    from importlib.metadata import version

    from fedunlearn.models.default import cache_root

    fields = {"format": _CONFIG_CACHE_FORMAT, "spec": dataclasses.asdict(spec), "base": base_name,
              "peft": version("peft")}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:24]
    cached = cache_root() / "adapter-configs" / f"{key}.json"
    with contextlib.suppress(OSError, ValueError):
        text = cached.read_text(encoding="utf-8")
        doc = json.loads(text)
        if isinstance(doc, dict) and text.endswith("\n") and _matches(doc, spec, base_name):
            return text
    with tempfile.TemporaryDirectory() as tmp:
        config = spec.to_peft_config()
        config.base_model_name_or_path = base_name
        config.save_pretrained(tmp)
        _canonical_json(Path(tmp) / ADAPTER_CONFIG_FILE)
        text = (Path(tmp) / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8")
    with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{cached.name}.", suffix=".tmp", dir=cached.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(partial, cached)
    return text


#: Bump when what fedunlearn asks peft to write changes (to_peft_config, _canonical_json): cached
#: adapter configs of an older format are then written again.
_CONFIG_CACHE_FORMAT = 1


def _matches(doc: dict, spec: LoraSpec, base_name: str) -> bool:
    """Whether a cached adapter config says what ``spec`` and ``base_name`` say, field by field
    (a damaged or planted entry is written again by peft instead of being served)."""
    want = {"r": spec.r, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
            "target_modules": sorted(spec.target_modules), "base_model_name_or_path": base_name,
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "bias": "none", "modules_to_save": None,
            "use_dora": False, "use_rslora": False}
    return all(doc.get(k) == v for k, v in want.items())

def _canonical_json(path: Path) -> None:
    """Rewrite a JSON file with sorted keys and sorted ``target_modules``.

    peft keeps ``target_modules`` as a set, whose order changes from process to process (string
    hashing is randomized), so the same adapter would otherwise be written with other bytes, and a
    certified hash of the file could not be reproduced by anyone else.
    """
    doc = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(doc.get("target_modules"), list):
        doc["target_modules"] = sorted(doc["target_modules"])
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_combined(
    folder: Path,
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    *,
    base_model_path: Path,
    spec: LoraSpec,
) -> Path:
    """Export the exact ΔW combination ``Σ_s w_s ΔW_s`` of several states as one adapter.

    Uses :func:`~fedunlearn.models.combine_exact`; the adapter has rank ``S·r`` and alpha
    ``S·alpha`` (so the scaling ``alpha / r`` is unchanged). Weights are used as given.

    Returns
    -------
    Path
        `folder`, as :func:`export_adapter`.
    """
    combined = combine_exact(states, weights)
    count = len(states)
    wide = dataclasses.replace(spec, r=spec.r * count, alpha=spec.alpha * count)
    return export_adapter(folder, combined, base_model_path=base_model_path, spec=wide)


def adapter_files_sha256(folder: Path) -> dict[str, str]:
    """Hex SHA-256 of every file in an exported folder, by file name (sorted).

    Raises
    ------
    ModelError
        If `folder` is not an adapter folder.
    """
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG_FILE).is_file() or not (folder / ADAPTER_WEIGHTS_FILE).is_file():
        raise ModelError(
            f"{str(folder)!r} is not an exported adapter folder; expected {ADAPTER_CONFIG_FILE} and "
            f"{ADAPTER_WEIGHTS_FILE} written by export_adapter()"
        )
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.is_file()
    }


def _replaceable(folder: Path) -> bool:
    """An existing folder may be replaced if it is an empty folder or an adapter folder."""
    if not folder.is_dir():
        return False
    return (folder / ADAPTER_CONFIG_FILE).is_file() or not any(folder.iterdir())


def _swap_into_place(staging: Path, folder: Path) -> None:
    # rename() cannot replace a non-empty directory, so an old adapter is moved aside first and
    # deleted after; between the two renames the folder is briefly absent, never half-written.
    if folder.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.replace(folder, retired / folder.name)
        os.replace(staging, folder)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, folder)
