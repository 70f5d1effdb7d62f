"""Silence transformers' and peft's own progress bars and deprecation chatter around our calls."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import transformers

__all__ = ["quiet_transformers"]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide the "Loading weights"/"Writing model shards" bars and known upstream warnings.

    fedunlearn shows its own progress; these bars would repeat on every Flower message. Not
    thread-safe (it toggles a global switch), like transformers' own switch.
    """
    hf_logging = transformers.utils.logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # peft 0.21 still calls the renamed is_gradient_checkpointing of transformers 5.
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
