"""Load the frozen base causal LM and its tokenizer from a local folder.

The base model is either a folder the user provides (any Hugging Face causal LM saved with
``save_pretrained``) or the embedded default (:func:`~fedunlearn.models.ensure_default_model`).
fedunlearn never contacts a model hub: every load passes ``local_files_only=True`` and a path that
is not an existing folder is an error, not a repository id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import torch

from fedunlearn.errors import ModelError
from fedunlearn.models._quiet import quiet_transformers
from fedunlearn.models.default import DefaultModelSpec, ensure_default_model, spec_for_size
from fedunlearn.models.device import DeviceSpec, pick_device

if TYPE_CHECKING:  # transformers' modelling stack takes seconds to import: loaded where a model is
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["BaseModel", "load_base_model", "resolve_model_path"]


@dataclass
class BaseModel:
    """A frozen causal LM, its tokenizer and where they came from.

    Attributes
    ----------
    model : PreTrainedModel
        In eval mode on ``device.device`` with dtype ``device.dtype``; no parameter requires grad.
    tokenizer : PreTrainedTokenizerBase
        Always has a pad token.
    path : Path
        Absolute local folder the model was loaded from.
    device : DeviceSpec
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path
    device: DeviceSpec


def resolve_model_path(
    path: str | Path | None, *, spec: DefaultModelSpec | None = None, size: str = "small"
) -> Path:
    """Turn a model setting into an absolute local folder.

    Parameters
    ----------
    path : str or Path or None
        ``None`` or ``""``: the embedded default model (built on first use). Otherwise a local
        folder containing ``config.json``.
    spec : DefaultModelSpec, optional
        Recipe of the default model; ignored when `path` is given.
    size : str, default "small"
        Named size of the default model (:data:`~fedunlearn.models.default.SIZES`) when neither
        `path` nor `spec` is given.

    Returns
    -------
    Path

    Raises
    ------
    ModelError
        If `path` is not an existing folder with a ``config.json``.
    """
    if path is None or (isinstance(path, str) and not path.strip()):
        return ensure_default_model(spec if spec is not None else spec_for_size(size)).resolve()
    if not isinstance(path, (str, Path)):
        raise ModelError(
            f"model path {path!r} has type {type(path).__name__}; expected a str or Path naming a "
            "local model folder, or None for the embedded default model"
        )
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(
            f"model path {str(path)!r} is not an existing local folder; fedunlearn never downloads "
            "from a model hub: save the model with save_pretrained() into a folder and pass that "
            "folder, or leave the path empty to use the embedded default model"
        )
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"model folder {str(folder)!r} has no config.json; expected a folder written by "
            "save_pretrained() (config.json, weights, tokenizer files): pass such a folder"
        )
    return folder.resolve()


def load_base_model(
    path: str | Path | None = None, *, device: DeviceSpec | None = None
) -> BaseModel:
    """Load the frozen base model and tokenizer.

    Parameters
    ----------
    path : str or Path or None
        See :func:`resolve_model_path`; ``None`` uses the default model.
    device : DeviceSpec, optional
        Defaults to ``pick_device("auto")``.

    Returns
    -------
    BaseModel
        The model in eval mode on its device, every parameter with ``requires_grad=False``; the
        tokenizer with a pad token (the eos token when the folder defines none).

    Raises
    ------
    ModelError
        If the folder is missing or invalid, or the model or tokenizer cannot be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_path(path)
    spec = device if device is not None else pick_device("auto")
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=spec.dtype, local_files_only=True
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"cannot load a causal LM from {str(folder)!r}: {exc}; expected a folder written by "
            "save_pretrained() of an AutoModelForCausalLM architecture"
        ) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"cannot load the tokenizer from {str(folder)!r}: {exc}; save the tokenizer into the "
            "model folder with tokenizer.save_pretrained(folder)"
        ) from exc
    # fedunlearn truncates every sequence itself (records to data.max-length, scoring in windows), so
    # transformers' one-time "sequence length is longer than the specified maximum" warning only
    # alarms users: mark it as already shown.
    if isinstance(getattr(tokenizer, "deprecation_warnings", None), dict):
        tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(
                f"the tokenizer in {str(folder)!r} has neither a pad nor an eos token; add one "
                "with tokenizer.add_special_tokens({'pad_token': ...}) and save it again"
            )
        # Padding is always masked out of losses, so reusing eos is harmless.
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(spec.device)
    model.eval()
    model.requires_grad_(False)
    _check_loaded(model, folder)
    return BaseModel(model=model, tokenizer=tokenizer, path=folder, device=spec)


def _check_loaded(model: PreTrainedModel, folder: Path) -> None:
    # from_pretrained leaves weights missing from the checkpoint randomly initialized (with a
    # warning only); meta tensors are weights that were never materialized at all.
    meta = [name for name, p in model.named_parameters() if p.device == torch.device("meta")]
    if meta:
        raise ModelError(
            f"the weights in {str(folder)!r} do not cover {len(meta)} parameters "
            f"(e.g. {meta[0]}); re-save the model with save_pretrained()"
        )
