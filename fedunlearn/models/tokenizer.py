"""Train the small byte-level BPE tokenizer of the embedded default model.

Byte-level BPE (GPT-2 style) can encode any text without an unknown token, so organizations' data
never fails to tokenize. Three special tokens come first in the vocabulary, with fixed ids:

====================  ====  ===========================================================
token                 id    use
====================  ====  ===========================================================
``<|bos|>``           0     prepended to every encoded text by the post-processor
``<|eos|>``           1     end of a document (added explicitly by callers that pack text)
``<|pad|>``           2     padding; masked out of losses
====================  ====  ===========================================================

Training is deterministic: the same corpus and vocabulary size give the same ``tokenizer.json``
(the ``tokenizers`` trainer orders its alphabet and breaks ties in merge counts by token ids).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from fedunlearn.errors import ConfigError, ModelError

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "MIN_VOCAB_SIZE",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "train_tokenizer",
]

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
#: In id order: ``<|bos|>`` = 0, ``<|eos|>`` = 1, ``<|pad|>`` = 2.
SPECIAL_TOKENS: tuple[str, ...] = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
#: 256 byte symbols plus the special tokens; anything smaller cannot encode every byte.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def train_tokenizer(corpus: Iterable[str], *, vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `corpus`.

    Parameters
    ----------
    corpus : iterable of str
        Training documents, e.g. :func:`fedunlearn.data.public_corpus`. Must contain text.
    vocab_size : int, default 2048
        Upper bound on the vocabulary, special tokens and the 256 byte symbols included. A small
        corpus may yield fewer tokens (BPE stops when no pair occurs twice).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        With ``bos_token``, ``eos_token`` and ``pad_token`` set (ids 0, 1, 2). Encoding prepends
        ``<|bos|>``; nothing is appended. ``decode(ids, skip_special_tokens=True)`` returns the
        original text.

    Raises
    ------
    ConfigError
        If `vocab_size` is below :data:`MIN_VOCAB_SIZE`.
    ModelError
        If `corpus` holds no text.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            f"tokenizer vocab_size is {vocab_size!r}; expected an int >= {MIN_VOCAB_SIZE} "
            "(256 byte symbols + 3 special tokens): raise vocab_size"
        )
    documents = [text for text in corpus if isinstance(text, str) and text]
    if not documents:
        raise ModelError(
            "cannot train a tokenizer on an empty corpus; expected at least one non-empty string: "
            "pass e.g. fedunlearn.data.public_corpus(1000)"
        )

    tokenizer = Tokenizer(models.BPE())
    # add_prefix_space=False: a text's first word is encoded as written, so decode(encode(t)) == t.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer, length=len(documents))
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    # trim_offsets=False keeps character offsets exact for byte-level tokens.
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN} $A",
                pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
                special_tokens=[(BOS_TOKEN, bos_id)],
            ),
        ]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    # Callers cut long texts into blocks or windows themselves: the "sequence length is longer than
    # the specified maximum" warning would only alarm (see fedunlearn.models.base as well).
    fast.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    return fast
