"""The embedded default base model: a small Llama-style causal LM built locally, never downloaded.

fedunlearn must run with no model hub. When no base model folder is given, the default is built
from a :class:`DefaultModelSpec`: a byte-level BPE tokenizer and a short pre-training on **real
English text that every machine running fedunlearn already has** (the Python interpreter's help
pages and the docstrings of its standard library and of numpy, scipy and pandas; see
:mod:`fedunlearn.data.realtext`), and a :class:`~transformers.LlamaConfig` with a seeded
initialization. A slice of the corpus (documents whose sha256 starts with a byte below
:data:`HELDOUT_BYTE`) is held out of both tokenizer and training; the build measures bits per byte
on it and on text from sources the corpus does not contain (license texts, manual pages, ...),
next to a uniform and a unigram baseline. The result is an ordinary Hugging Face model folder
cached under ``<cache_root>/models/default-<key>``, where ``key`` hashes every spec field and the
identity of the corpus on this machine, so a changed spec or corpus never reuses a stale model.
``fedunlearn_build.json`` in the folder is the manifest: corpus sources with sizes and sha256,
token counts, training steps and losses, and the bits-per-byte table.

Two sizes are named in :data:`SIZES`: ``small`` (the default, ~1.6M parameters, built in about
3 minutes on 2 CPU cores) and ``large`` (~21M parameters, about 50 minutes on 2 cores, 1.0 s per step; build it
once with ``fedunlearn model build --size large``). ``DefaultModelSpec(corpus="synthetic")`` keeps
the former synthetic-corpus recipe (tests use it for tiny, fast models).

Building is safe under concurrency (Ray actors, parallel tests): a file lock lets one process
build while the others wait, and the folder appears by an atomic rename of a finished temporary
folder, so a half-written model is never visible. On the CPU the build is deterministic for a given
spec, corpus and thread count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch
import transformers
from filelock import FileLock

from fedunlearn.data.realtext import ORGANIZATION_SOURCES, PRETRAIN_SOURCES, corpus_identity, gather
from fedunlearn.errors import ConfigError, FedUnlearnError, ModelError, UnknownNameError
from fedunlearn.models._quiet import quiet_transformers
from fedunlearn.models.bitsperbyte import UnigramModel, bits_per_byte
from fedunlearn.models.device import set_cpu_threads
from fedunlearn.models.pretrain import pack_corpus, pretrain
from fedunlearn.models.tokenizer import MIN_VOCAB_SIZE, train_tokenizer

__all__ = [
    "BUILD_INFO_FILE",
    "CORPORA",
    "SIZES",
    "DefaultModelSpec",
    "build_device",
    "cache_root",
    "default_model_dir",
    "ensure_default_model",
    "spec_for_size",
]

_LOG = logging.getLogger(__name__)

#: Bump when the build recipe changes in a way that changes the weights; it is part of the key.
_FORMAT_VERSION = 3  # 2: the public corpus gained registry records; 3: real-text corpus, held-out slice
#: Corpora a default model can be pre-trained on.
CORPORA = ("real", "synthetic")
#: A corpus document is held out (never trained on) when its sha256's first byte is below this:
#: about 3% of the documents.
HELDOUT_BYTE = 8
#: Documents per organization source scored for the build's bits-per-byte table.
_EVAL_DOCUMENTS = 200
#: Written into every built folder: the spec, its key, versions and the pre-training losses.
BUILD_INFO_FILE = "fedunlearn_build.json"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", BUILD_INFO_FILE)


@dataclass(frozen=True)
class DefaultModelSpec:
    """Recipe of the embedded default model; every field enters the cache key.

    The default (``SIZES["small"]``) has 1,573,504 parameters: hidden 128, 2 layers, untied
    4096-token embeddings (which hold two thirds of them). On two CPU cores it pre-trains 800 steps
    of 16 blocks of 128 tokens (1.6M tokens, about two passes over the 0.87M-token corpus) in about
    2.3 minutes. Measured on this recipe (see the build manifest for a machine's own figures): on
    the held-out slice 1.48 bits per byte against 2.31 for a unigram model and 2.89 for a uniform
    guess; on license texts, manual pages, package descriptions and Perl documentation, none of
    them in the corpus, 2.12-2.31 against 2.82-3.22 (unigram). 300 steps reached only 1.73 on the
    held-out slice; a corpus of the Python help pages and standard library alone (0.23M tokens)
    over-fitted at 800 steps (2.58 bits per byte on license text against 2.31 here).

    Attributes
    ----------
    vocab_size : int
        Upper bound of the BPE vocabulary and the embedding rows (>= 259).
    hidden_size, num_layers, num_heads, intermediate_size : int
        Transformer shape; `hidden_size` must be a multiple of `num_heads`.
    max_positions : int
        Context length; also the pre-training block size and the tokenizer's model_max_length.
    corpus : str
        ``"real"``: the machine's real text (:data:`fedunlearn.data.realtext.PRETRAIN_SOURCES`);
        ``"synthetic"``: :func:`fedunlearn.data.public_corpus` (templated text; tiny test models).
    corpus_documents : int
        Most documents taken from each corpus source (the whole real corpus, about 23,500
        documents, when larger).
    pretrain_steps, batch_size : int
        AdamW steps and blocks per step of pre-training (0 steps: keep the random init).
    lr : float
        Peak learning rate.
    seed : int
        Seeds the corpus, the weight initialization and the batch order.
    """

    vocab_size: int = 4096
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 128
    corpus: str = "real"
    corpus_documents: int = 100_000
    pretrain_steps: int = 800
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        minimums = {
            "vocab_size": MIN_VOCAB_SIZE,
            "hidden_size": 1,
            "num_layers": 1,
            "num_heads": 1,
            "intermediate_size": 1,
            "max_positions": 2,
            "corpus_documents": 1,
            "pretrain_steps": 0,
            "batch_size": 1,
            "seed": 0,
        }
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(
                    f"DefaultModelSpec.{name} is {value!r}; expected an int >= {minimum}"
                )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"DefaultModelSpec.hidden_size {self.hidden_size} is not divisible by num_heads "
                f"{self.num_heads}: choose num_heads dividing hidden_size"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(
                f"DefaultModelSpec head size {self.hidden_size // self.num_heads} is odd; rotary "
                "position embeddings need an even head size: change hidden_size or num_heads"
            )
        if self.corpus not in CORPORA:
            raise ConfigError(
                f"DefaultModelSpec.corpus is {self.corpus!r}; expected one of {', '.join(CORPORA)}"
            )
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < lr < math.inf):
            raise ConfigError(f"DefaultModelSpec.lr is {lr!r}; expected a finite float > 0")

    def key(self) -> str:
        """Short stable hash of all fields and the build-format version (the cache folder name).

        Returns
        -------
        str
            12 hexadecimal characters.
        """
        fields = dataclasses.asdict(self)
        fields["lr"] = repr(float(self.lr))  # 3e-3 and 0.003 are one spec
        identity = corpus_identity(PRETRAIN_SOURCES) if self.corpus == "real" else "synthetic"
        content = {"format": _FORMAT_VERSION, "spec": fields, "corpus": identity}
        if build_device(self) != "cpu":  # a CUDA (bf16) build has other weights than a CPU one
            content["device"] = build_device(self)
        payload = json.dumps(content, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


#: Named sizes of the default model (the same Llama architecture family and corpus).
#: ``large`` has 21,041,664 parameters: hidden 512, 4 layers of 8 heads, MLP 1376, 8192-token
#: vocabulary; it pre-trains 3000 steps of 16 blocks of 128 tokens (6.1M tokens, about six passes).
SIZES: dict[str, DefaultModelSpec] = {
    "small": DefaultModelSpec(),
    "large": DefaultModelSpec(vocab_size=8192, hidden_size=512, num_layers=4, num_heads=8,
                              intermediate_size=1376, pretrain_steps=3000, batch_size=16, lr=1e-3),
}


def spec_for_size(size: str) -> DefaultModelSpec:
    """The :data:`SIZES` entry named `size` (``"small"`` or ``"large"``).

    Raises
    ------
    UnknownNameError
        If `size` is not a key of :data:`SIZES` (the message lists them).
    """
    if size not in SIZES:
        raise UnknownNameError("model size", size, SIZES)
    return SIZES[size]


def build_device(spec: DefaultModelSpec) -> str:
    """Where `spec` is pre-trained: ``"cuda-bf16"`` for a real-text build when CUDA is present
    (about a minute instead of about 50 minutes for the large size), else ``"cpu"`` (float32,
    deterministic). Synthetic-corpus (test) models are always built on the CPU."""
    if spec.corpus == "real" and torch.cuda.is_available():
        return "cuda-bf16"
    return "cpu"


def cache_root() -> Path:
    """Folder where fedunlearn caches built models.

    Returns
    -------
    Path
        ``$FEDUNLEARN_CACHE`` when set, else the platform's user cache folder for ``fedunlearn``
        (``~/.cache/fedunlearn`` on Linux, honouring ``$XDG_CACHE_HOME``).
    """
    override = os.environ.get("FEDUNLEARN_CACHE", "").strip()
    if override:
        return Path(override).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # platformdirs is optional; fall back to the XDG convention
        base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join("~", ".cache")
        return Path(base).expanduser() / "fedunlearn"
    return Path(user_cache_dir("fedunlearn", appauthor=False))


def default_model_dir(spec: DefaultModelSpec, cache_dir: Path | None = None) -> Path:
    """Where :func:`ensure_default_model` keeps the model of `spec` (whether built or not)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return (root / "models" / f"default-{spec.key()}").absolute()


def ensure_default_model(
    spec: DefaultModelSpec = DefaultModelSpec(),
    *,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Path:
    """Return the local folder of the default model, building it once if absent.

    Parameters
    ----------
    spec : DefaultModelSpec
        The recipe; its :meth:`~DefaultModelSpec.key` names the folder.
    cache_dir : Path, optional
        Cache root; defaults to :func:`cache_root`.
    progress : bool, default True
        Show a progress bar while pre-training.

    Returns
    -------
    Path
        ``cache_dir/models/default-<key>`` holding ``config.json``, ``model.safetensors``, the
        tokenizer files and :data:`BUILD_INFO_FILE`; loadable with
        ``AutoModelForCausalLM.from_pretrained``.

    Raises
    ------
    ModelError
        If the cache cannot be written, or the folder exists but is incomplete.
    """
    if not isinstance(spec, DefaultModelSpec):
        raise ConfigError(f"spec is {type(spec).__name__}; expected a DefaultModelSpec")
    folder = default_model_dir(spec, cache_dir)
    if folder.is_dir():
        return _checked(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create the model cache folder {folder.parent} ({exc}); set FEDUNLEARN_CACHE "
            "to a writable folder or pass cache_dir"
        ) from exc
    with FileLock(str(folder.parent / f"{folder.name}.lock")):
        if folder.is_dir():  # another process built it while this one waited
            return _checked(folder)
        # Holding the lock, any temporary folder of this key is a crashed build's leftover.
        for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            _build(spec, staging, progress=progress)
            os.replace(staging, folder)  # atomic: readers see nothing or the whole folder
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    _LOG.info("built default model %s", folder)
    return folder


def _checked(folder: Path) -> Path:
    missing = [name for name in _REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelError(
            f"cached default model {folder} lacks {', '.join(missing)}; it was not written by "
            "fedunlearn or was modified: delete the folder and it will be rebuilt"
        )
    return folder


def _say(progress: bool, text: str) -> None:
    if progress:
        from rich.console import Console

        Console(stderr=True).print(text)
    _LOG.info(text)


def _corpus(spec: DefaultModelSpec, progress: bool) -> tuple[list[str], list[str], dict[str, object]]:
    """(training documents, held-out documents, corpus manifest) of `spec`."""
    if spec.corpus == "synthetic":
        from fedunlearn.data import public_corpus

        documents = public_corpus(spec.corpus_documents, seed=spec.seed)
        return documents, [], {"kind": "synthetic", "generator": "fedunlearn.data.public_corpus",
                               "documents": len(documents), "seed": spec.seed}
    _say(progress, "building the default model (first use only): reading the corpus ...")
    gathered = gather(PRETRAIN_SOURCES, max_documents=spec.corpus_documents)
    for report in gathered.reports:
        if report.missing:
            _say(progress, f"[yellow]corpus source {report.name!r} ({report.where}) gave no text on this "
                           "machine; building from the others[/]")
    train, heldout = [], []
    for document in gathered.documents:
        first = hashlib.sha256(document.encode("utf-8")).digest()[0]
        (heldout if first < HELDOUT_BYTE else train).append(document)
    manifest = {"kind": "real", "identity": corpus_identity(PRETRAIN_SOURCES), **gathered.manifest(),
                "heldout_rule": f"sha256(document)[0] < {HELDOUT_BYTE}",
                "train_documents": len(train), "heldout_documents": len(heldout)}
    _say(progress, f"  {len(gathered.documents)} documents, {manifest['bytes_utf8'] / 1e6:.1f} MB from "
                   f"{', '.join(r.name for r in gathered.reports if not r.missing)}; {len(heldout)} held out")
    return train, heldout, manifest


def _evaluation(model, tokenizer, train: list[str], heldout: list[str], documents: int) -> dict[str, object]:
    """Bits per byte of uniform, unigram and the model on held-out and never-seen text."""
    unigram = UnigramModel(tokenizer, train)
    table: dict[str, object] = {"unigram_fit": "the training documents of the corpus"}
    if heldout:
        table["heldout-slice"] = bits_per_byte(heldout, tokenizer, unigram=unigram, model=model).as_dict()
    try:
        others = gather(ORGANIZATION_SOURCES, max_documents=documents, max_files=documents)
    except FedUnlearnError as exc:  # none of them on this machine: report, do not fail the build
        table["not-in-corpus"] = f"not measured: {exc}"
        return table
    for report in others.reports:
        docs = others.by_source(report.name)
        if docs:
            table[report.name] = bits_per_byte(docs, tokenizer, unigram=unigram, model=model).as_dict()
    return table


def _build(spec: DefaultModelSpec, folder: Path, *, progress: bool) -> None:
    """Read the corpus, train the tokenizer, pre-train and measure the model, save into `folder`."""
    documents, heldout, corpus_manifest = _corpus(spec, progress)
    tokenizer = train_tokenizer(documents, vocab_size=spec.vocab_size)
    tokenizer.model_max_length = spec.max_positions
    from transformers import LlamaConfig, LlamaForCausalLM  # the modelling stack: seconds to import

    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Untied: LoRA and unlearning reason about the input and output matrices separately.
        tie_word_embeddings=False,
    )
    # Initialized on the CPU in float32 so that a key means the same initial weights everywhere;
    # fork_rng keeps the caller's global RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    blocks = pack_corpus(tokenizer, documents, spec.max_positions)  # [N, T]
    parameters = sum(p.numel() for p in model.parameters())
    _say(progress and spec.corpus == "real",
         f"  tokenizer: {len(tokenizer)} tokens; {blocks.numel()} training tokens; model: {parameters:,} "
         f"parameters; pre-training {spec.pretrain_steps} steps")
    threads = torch.get_num_threads()
    # Synthetic (test) models are tiny: one thread, several are slower (OpenMP overhead). Real-text
    # pre-training runs batches of 16 x 128 tokens, where every core helps.
    set_cpu_threads(model, 0 if spec.corpus == "synthetic" else (os.cpu_count() or 1))
    device = build_device(spec)
    if device != "cpu":
        model.to("cuda")
    try:
        result = pretrain(
            model,
            blocks,
            steps=spec.pretrain_steps,
            batch_size=spec.batch_size,
            lr=spec.lr,
            seed=spec.seed,
            progress=progress,
        )
        evaluation = (_evaluation(model, tokenizer, documents, heldout, min(_EVAL_DOCUMENTS, spec.corpus_documents))
                      if spec.corpus == "real" else {})
    finally:
        torch.set_num_threads(threads)
    model.to("cpu")
    if "heldout-slice" in evaluation:
        row = evaluation["heldout-slice"]
        _say(progress, f"  held-out text: {row['model']:.2f} bits per byte (unigram {row['unigram']:.2f}, "
                       f"uniform {row['uniform']:.2f})")
    with quiet_transformers():
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    info = {
        "format_version": _FORMAT_VERSION,
        "key": spec.key(),
        "spec": dataclasses.asdict(spec),
        "parameters": parameters,
        "tokenizer_vocab": len(tokenizer),
        "corpus": corpus_manifest,
        "pretrain": {
            "blocks": len(blocks),
            "corpus_tokens": int(blocks.numel()),
            "initial_loss": result.initial_loss,
            "final_loss": result.final_loss,
            "step_losses": list(result.step_losses),
            "steps": result.steps,
            "tokens_seen": result.tokens_seen,
            "seconds": result.seconds,
            "threads": torch.get_num_threads(),
            "device": device,
        },
        "bits_per_byte": evaluation,
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    (folder / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
