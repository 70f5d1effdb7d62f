"""Short causal-LM pre-training of the embedded default model on the public corpus.

Documents are tokenized (``<|bos|>`` text ``<|eos|>``), concatenated and cut into blocks of
``block_size`` tokens, nanoGPT style: no padding, every token is a target. Training is AdamW with
a linear warm-up and a cosine decay, batches drawn from a seeded permutation, so the same inputs,
seed and thread count give bit-identical weights on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedunlearn.errors import ConfigError, ModelError

__all__ = ["PretrainResult", "pack_corpus", "pretrain"]

_LOG = logging.getLogger(__name__)

#: The loss is reported on the first blocks before and after training: a cheap, deterministic
#: progress measure on training data, not a generalization test.
_PROBE_BLOCKS = 64


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` did.

    Attributes
    ----------
    initial_loss, final_loss : float
        Mean next-token cross-entropy (nats) on a fixed probe batch before and after training.
    step_losses : tuple of float
        Training loss of every step.
    steps, tokens_seen : int
        Optimizer steps taken and tokens processed.
    seconds : float
        Wall time of the training loop.
    """

    initial_loss: float
    final_loss: float
    step_losses: tuple[float, ...]
    steps: int
    tokens_seen: int
    seconds: float


def pack_corpus(
    tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], block_size: int
) -> torch.Tensor:
    """Tokenize `documents` and pack them into equal blocks.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        Must prepend ``bos`` itself (as :func:`~fedunlearn.models.train_tokenizer`'s does) and
        have an ``eos_token_id``, which is appended to each document.
    documents : sequence of str
    block_size : int
        Tokens per block, at most the model's ``max_position_embeddings``.

    Returns
    -------
    torch.Tensor
        ``int64`` of shape ``[num_blocks, block_size]``; the tail shorter than a block is dropped.

    Raises
    ------
    ModelError
        If the corpus does not fill a single block.
    """
    if block_size < 2:
        raise ConfigError(f"block_size is {block_size}; expected >= 2 tokens per block")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ModelError("the tokenizer has no eos_token; set tokenizer.eos_token before packing")
    # verbose=False: documents longer than model_max_length are fine, they are cut into blocks.
    encoded = tokenizer(list(documents), add_special_tokens=True, verbose=False)["input_ids"]
    stream = [token for ids in encoded for token in (*ids, eos)]
    num_blocks = len(stream) // block_size
    if num_blocks == 0:
        raise ModelError(
            f"the corpus has {len(stream)} tokens, fewer than one block of {block_size}: "
            "raise corpus_documents or lower max_positions"
        )
    flat = torch.tensor(stream[: num_blocks * block_size], dtype=torch.long)
    return flat.view(num_blocks, block_size)  # [N, T]


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up over the first 10% of steps, then cosine decay to 10% of the peak."""
    warmup = max(1, total // 10)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _batches(num_blocks: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """Indices of each step's batch: consecutive slices of seeded per-epoch permutations."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_blocks, generator=generator)
    cursor = 0
    for _ in range(steps):
        if cursor + batch_size > num_blocks:
            order = torch.randperm(num_blocks, generator=generator)
            cursor = 0
        yield order[cursor : cursor + batch_size]  # [B]
        cursor += batch_size


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    # bf16 on CUDA (weights and optimizer state stay float32); plain float32 on the CPU.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def _mean_loss(model: PreTrainedModel, blocks: torch.Tensor, batch_size: int) -> float:
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(blocks), batch_size):
        chunk = blocks[start : start + batch_size].to(device)  # [b, T]
        with _autocast(device):
            loss = model(input_ids=chunk, labels=chunk).loss
        total += float(loss) * len(chunk)
        count += len(chunk)
    return total / count


def _progress_bar(enabled: bool, steps: int) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]pre-training default model[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def pretrain(
    model: PreTrainedModel,
    blocks: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool = False,
) -> PretrainResult:
    """Train every parameter of `model` for `steps` AdamW steps on `blocks`, in place.

    Parameters
    ----------
    model : PreTrainedModel
        A causal LM in ``float32`` on the CPU or a CUDA device (then trained with bf16 autocast);
        left in eval mode afterwards, on its device.
    blocks : torch.Tensor
        ``[num_blocks, block_size]`` token ids from :func:`pack_corpus`.
    steps, batch_size : int
        Optimizer steps and blocks per step (capped at the number of blocks).
    lr : float
        Peak learning rate of the warm-up/cosine schedule.
    seed : int
        Seeds the batch order; the model's initialization is the caller's business.
    progress : bool
        Show a rich progress bar on stderr.

    Returns
    -------
    PretrainResult
    """
    if steps < 0 or batch_size < 1 or not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(
            f"pre-training needs steps >= 0, batch_size >= 1 and a finite lr > 0; got steps={steps}, "
            f"batch_size={batch_size}, lr={lr}"
        )
    batch_size = min(batch_size, len(blocks))
    probe = blocks[:_PROBE_BLOCKS]  # [P, T]
    model.eval()
    initial = _mean_loss(model, probe, batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, max(steps, 1)))
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    with _progress_bar(progress, steps) as bar:
        task = bar.add_task("", total=steps) if bar is not None else None
        device = next(model.parameters()).device
        for index in _batches(len(blocks), batch_size, steps, seed):
            batch = blocks[index].to(device)  # [B, T]
            with _autocast(device):
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise ModelError(
                    f"pre-training diverged at step {len(losses)} (loss {losses[-1]}); "
                    f"lower lr (now {lr})"
                )
            if bar is not None:
                bar.update(task, advance=1, description=f"loss {losses[-1]:.3f}")
    seconds = time.perf_counter() - start
    model.eval()
    final = _mean_loss(model, probe, batch_size)
    _LOG.info(
        "pre-trained %d steps in %.1f s: probe loss %.3f -> %.3f", steps, seconds, initial, final
    )
    return PretrainResult(
        initial_loss=initial,
        final_loss=final,
        step_losses=tuple(losses),
        steps=steps,
        tokens_seen=steps * batch_size * blocks.shape[1],
        seconds=seconds,
    )
