"""RFC 6962 / RFC 9162 Merkle tree hashing, inclusion and consistency proofs.

The tree over entries ``D[0:n]`` is the one of RFC 9162 §2.1.1 with SHA-256::

    MTH({})      = SHA-256()
    MTH({d0})    = SHA-256(0x00 || d0)                        (leaf hash)
    MTH(D[0:n])  = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  k = largest power of 2 < n

Producers (``root_hash``, ``inclusion_proof``, ``consistency_proof`` and their
``*_from_leaf_hashes`` twins) raise :class:`~fedunlearn.errors.ConfigError` on bad arguments.
Verifiers (``verify_inclusion``, ``verify_consistency``) follow the algorithms of RFC 9162
§2.1.3.2 and §2.1.4.2 and return ``False`` on *any* malformed input (wrong types, hashes that
are not 32 bytes, sizes of 0, indices out of range, extra or missing proof elements); they
never raise.

A proof does not pin the tree size: the same path can verify for two sizes that share a
root. Always take ``tree_size`` and ``root`` from a signed checkpoint, never from the party
that supplied the proof.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from fedunlearn.errors import ConfigError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "consistency_proof",
    "consistency_proof_from_leaf_hashes",
    "inclusion_proof",
    "inclusion_proof_from_leaf_hashes",
    "leaf_hash",
    "node_hash",
    "prefix_roots",
    "root_from_leaf_hashes",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root hash of the empty tree: SHA-256 of the empty string."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(entry: bytes) -> bytes:
    """Return the RFC 6962 leaf hash ``SHA-256(0x00 || entry)`` of one raw entry."""
    if not isinstance(entry, (bytes, bytearray)):
        raise ConfigError(
            f"a Merkle leaf must be bytes, got {type(entry).__name__}; "
            "encode the entry first (e.g. canonical_json(event))"
        )
    return hashlib.sha256(_LEAF_PREFIX + bytes(entry)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree_root(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH of the leaves ``hashes[lo:hi]`` (non-empty), bottom-up.

    Pairing neighbours level by level and carrying an odd last node up unchanged builds
    exactly the RFC 6962 shape (left subtree perfect, right subtree the remainder).
    """
    level = [bytes(h) for h in hashes[lo:hi]]
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _check_leaf_hashes(hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(hashes):
        if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_SIZE:
            raise ConfigError(
                f"leaf hash {i} is {h!r:.80}; expected {HASH_SIZE} raw bytes such as "
                "leaf_hash(entry)"
            )


def _check_entries(entries: Sequence[bytes]) -> list[bytes]:
    if isinstance(entries, (bytes, bytearray, str)) or not isinstance(entries, Sequence):
        raise ConfigError(
            f"entries must be a list of bytes, got {type(entries).__name__}; "
            "wrap a single entry in a list"
        )
    return [leaf_hash(e) for e in entries]


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Return the tree root over already-computed leaf hashes (``EMPTY_ROOT`` if none)."""
    _check_leaf_hashes(hashes)
    return _subtree_root(hashes, 0, len(hashes)) if hashes else EMPTY_ROOT


def root_hash(entries: Sequence[bytes]) -> bytes:
    """Return the RFC 6962 Merkle tree hash of raw ``entries`` (``EMPTY_ROOT`` if empty)."""
    return root_from_leaf_hashes(_check_entries(entries))


def prefix_roots(hashes: Sequence[bytes], sizes: Iterable[int]) -> dict[int, bytes]:
    """Return ``{size: root of hashes[:size]}`` for many sizes in one pass.

    A compact range (one perfect subtree per set bit of the size) is grown leaf by leaf, so
    the cost is O(n log n) however many sizes are asked for, instead of O(n) per size.
    """
    _check_leaf_hashes(hashes)
    wanted = list(sizes)
    for size in wanted:
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(hashes):
            raise ConfigError(
                f"tree size {size!r} is not between 0 and the {len(hashes)} leaves available"
            )
    wanted = sorted(set(wanted))
    roots: dict[int, bytes] = {}
    stack: list[tuple[int, bytes]] = []  # (height, subtree root), heights strictly decreasing
    nxt = 0
    for size in wanted:
        while nxt < size:
            height, h = 0, bytes(hashes[nxt])
            while stack and stack[-1][0] == height:
                h = node_hash(stack.pop()[1], h)
                height += 1
            stack.append((height, h))
            nxt += 1
        if not stack:
            roots[size] = EMPTY_ROOT
            continue
        acc = stack[-1][1]
        for _, left in reversed(stack[:-1]):
            acc = node_hash(left, acc)
        roots[size] = acc
    return roots


def _path(hashes: Sequence[bytes], m: int, lo: int, hi: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[lo:hi]) for 0 <= m < hi - lo."""
    n = hi - lo
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return _path(hashes, m, lo, lo + k) + [_subtree_root(hashes, lo + k, hi)]
    return _path(hashes, m - k, lo + k, hi) + [_subtree_root(hashes, lo, lo + k)]


def _subproof(hashes: Sequence[bytes], m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[lo:hi], b) for 0 < m <= hi - lo."""
    n = hi - lo
    if m == n:
        return [] if whole else [_subtree_root(hashes, lo, hi)]
    k = _split(n)
    if m <= k:
        return _subproof(hashes, m, lo, lo + k, whole) + [_subtree_root(hashes, lo + k, hi)]
    return _subproof(hashes, m - k, lo + k, hi, False) + [_subtree_root(hashes, lo, lo + k)]


def _check_int(name: str, value: object, lo: int, hi: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(
            f"{name} {value!r} is out of range; expected an int in [{lo}, {hi}]: {fix}"
        )
    return value


def inclusion_proof_from_leaf_hashes(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Return the audit path of leaf ``index`` in the tree over ``hashes``."""
    _check_leaf_hashes(hashes)
    if not hashes:
        raise ConfigError("the tree is empty; no leaf has an inclusion proof: append entries first")
    _check_int("leaf index", index, 0, len(hashes) - 1, "ask for a leaf that is in the tree")
    return _path(hashes, index, 0, len(hashes))


def inclusion_proof(entries: Sequence[bytes], index: int) -> list[bytes]:
    """Return the RFC 9162 inclusion proof (audit path) of ``entries[index]``.

    Parameters
    ----------
    entries : list of bytes
        Raw leaf entries of the whole tree; its length is the tree size.
    index : int
        Zero-based position of the leaf to prove.

    Returns
    -------
    list of bytes
        Sibling hashes from the leaf up to the root (32 bytes each).
    """
    return inclusion_proof_from_leaf_hashes(_check_entries(entries), index)


def consistency_proof_from_leaf_hashes(hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return the proof that the first ``old_size`` leaves are a prefix of ``hashes``."""
    _check_leaf_hashes(hashes)
    if isinstance(old_size, bool) or not isinstance(old_size, int) or old_size < 1:
        raise ConfigError(
            f"old tree size {old_size!r} is not a positive int; every tree extends the empty "
            "tree, so no consistency proof is needed (or defined) from size 0"
        )
    if old_size > len(hashes):
        raise ConfigError(
            f"old tree size {old_size} exceeds the {len(hashes)} leaves of the newer tree; "
            "pass the entries of the larger tree"
        )
    return _subproof(hashes, old_size, 0, len(hashes), True)


def consistency_proof(entries: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return the RFC 9162 consistency proof from tree size ``old_size`` to ``len(entries)``.

    Parameters
    ----------
    entries : list of bytes
        Raw leaf entries of the newer tree.
    old_size : int
        Size of the older tree, ``1 <= old_size <= len(entries)``; equal sizes give ``[]``.

    Returns
    -------
    list of bytes
        The proof nodes (32 bytes each).
    """
    return consistency_proof_from_leaf_hashes(_check_entries(entries), old_size)


def _is_hash(value: object) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_SIZE


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_proof(proof: object) -> bool:
    return isinstance(proof, (list, tuple)) and all(_is_hash(p) for p in proof)


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Check an inclusion proof with the algorithm of RFC 9162 §2.1.3.2.

    Parameters
    ----------
    leaf_hash : bytes
        The 32-byte leaf hash ``leaf_hash(entry)``, not the raw entry.
    index : int
        Claimed position of the leaf, ``0 <= index < tree_size``.
    tree_size : int
        Size of the tree, taken from a signed checkpoint.
    proof : list of bytes
        The audit path.
    root : bytes
        The 32-byte root, taken from the same signed checkpoint.

    Returns
    -------
    bool
        True only if the proof is well formed and recomputes ``root`` exactly.
    """
    if not (_is_hash(leaf_hash) and _is_hash(root) and _is_proof(proof)):
        return False
    if not (_is_size(index) and _is_size(tree_size)) or index >= tree_size:
        return False
    fn, sn = index, tree_size - 1
    r = bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            return False  # proof longer than the path to the root
        if fn & 1 or fn == sn:
            r = node_hash(bytes(p), r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, bytes(p))
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and hmac.compare_digest(r, bytes(root))


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Check a consistency proof with the algorithm of RFC 9162 §2.1.4.2.

    Parameters
    ----------
    old_size, new_size : int
        Sizes of the two trees, ``1 <= old_size <= new_size``, from signed checkpoints.
    old_root, new_root : bytes
        Their 32-byte roots, from the same checkpoints.
    proof : list of bytes
        The consistency proof; empty exactly when the sizes are equal.

    Returns
    -------
    bool
        True only if the tree of ``new_size`` provably extends the tree of ``old_size``.
    """
    if not (_is_hash(old_root) and _is_hash(new_root) and _is_proof(proof)):
        return False
    if not (_is_size(old_size) and _is_size(new_size)) or not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and hmac.compare_digest(bytes(old_root), bytes(new_root))
    if not proof:
        return False
    path = [bytes(p) for p in proof]
    if old_size & (old_size - 1) == 0:  # power of two: the old root is a node of the new tree
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return (
        sn == 0
        and hmac.compare_digest(fr, bytes(old_root))
        and hmac.compare_digest(sr, bytes(new_root))
    )
