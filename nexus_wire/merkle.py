"""RFC 6962 / RFC 9162 Merkle tree math, shared by the edge (which builds its audit log on it
and serves proofs) and the hub (which checks a node's consistency proof on every heartbeat).

Leaf hash SHA-256(0x00 || d), node hash SHA-256(0x01 || l || r). A tree of ``n`` leaves is
described by its complete aligned subtrees: ``(level, index)`` covers leaves
``[index * 2^level, (index + 1) * 2^level)``. Every hash a proof carries is the fold of a few
such subtrees, so a log that stores each one as it completes (at most ``2n`` of them) answers
any inclusion or consistency proof with O(log n) lookups and no rehashing of leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
#: the longest proof of a tree of at most 2^64 leaves (a consistency proof holds at most
#: two hashes per level); what a receiver of a proof may bound it by
MAX_PROOF_HASHES = 2 * 64

Subtree = tuple[int, int]  # (level, index)
Frontier = list[tuple[int, bytes]]  # (height, root) of the perfect subtrees, largest first
#: the hash of one complete aligned subtree
SubtreeHash = Callable[[Subtree], bytes]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


# ---------------------------------------------------------------- appending


def extend_frontier(frontier: Frontier, leaf: bytes) -> Frontier:
    return extend(frontier, leaf)[0]


def extend(frontier: Frontier, leaf: bytes) -> tuple[Frontier, list[tuple[int, bytes]]]:
    """The frontier after appending ``leaf``, and the ``(level, hash)`` of every subtree the
    append completed (the leaf itself first): leaf number ``n`` completes the subtree
    ``(level, n // 2^level - 1)`` for each level where ``2^level`` divides ``n``."""
    out = [*frontier, (0, leaf)]
    completed = [(0, leaf)]
    while len(out) >= 2 and out[-1][0] == out[-2][0]:
        (height, left), (_, right) = out[-2], out[-1]
        out[-2:] = [(height + 1, node_hash(left, right))]
        completed.append(out[-1])
    return out, completed


def frontier_root(frontier: Frontier) -> bytes:
    """RFC 6962 MTH: the split point is the largest power of two below n, so folding the
    perfect subtrees from the right gives exactly the recursive definition."""
    return fold([subtree for _, subtree in frontier]) if frontier else EMPTY_ROOT


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 MTH(D[n]) of the leaf hashes."""
    frontier: Frontier = []
    for leaf in leaves:
        frontier = extend_frontier(frontier, leaf)
    return frontier_root(frontier)


def fold(hashes: Sequence[bytes]) -> bytes:
    """The root over consecutive subtrees, largest (leftmost) first, folded from the right."""
    root = hashes[-1]
    for subtree in reversed(hashes[:-1]):
        root = node_hash(subtree, root)
    return root


# ---------------------------------------------------------------- which subtrees a proof needs


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_subtrees(start: int, end: int) -> list[Subtree]:
    """The complete aligned subtrees whose fold is MTH(D[start:end]), for every range the
    RFC's recursion asks for (``start`` a multiple of the power of two at or above the
    range's size): the binary decomposition of its size, largest first."""
    out = []
    while start < end:
        level = (end - start).bit_length() - 1
        while start % (1 << level):
            level -= 1
        out.append((level, start >> level))
        start += 1 << level
    return out


def inclusion_subtrees(index: int, size: int) -> list[list[Subtree]]:
    """RFC 9162 2.1.3.1 PATH(index, D[size]): for each proof hash, the subtrees it folds."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    path: list[list[Subtree]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(range_subtrees(start + k, end))
            end = start + k
        else:
            path.append(range_subtrees(start, start + k))
            start += k
    return path[::-1]  # the recursion appends on the way back up: the leaf's sibling first


def consistency_subtrees(first: int, second: int) -> list[list[Subtree]]:
    """RFC 9162 2.1.4.1 PROOF(first, D[second]): for each proof hash, the subtrees it folds."""
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from a tree of {first} leaves to one of {second}")
    proof: list[list[Subtree]] = []
    start, end, m, whole = 0, second, first, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            proof.append(range_subtrees(start + k, end))
            end = start + k
        else:
            proof.append(range_subtrees(start, start + k))
            start, m, whole = start + k, m - k, False
    if not whole:  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
        proof.append(range_subtrees(start, end))
    return proof[::-1]


def resolve(plan: list[list[Subtree]], subtree: SubtreeHash) -> list[bytes]:
    return [fold([subtree(node) for node in nodes]) for nodes in plan]


def inclusion_proof(index: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    return resolve(inclusion_subtrees(index, size), subtree)


def consistency_proof(first: int, second: int, subtree: SubtreeHash) -> list[bytes]:
    return resolve(consistency_subtrees(first, second), subtree)


def subtree_hashes(leaves: Sequence[bytes]) -> SubtreeHash:
    """Every complete aligned subtree of ``leaves`` in memory (for tests and a log read whole)."""
    levels = [list(leaves)]
    while len(levels[-1]) >= 2:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
    return lambda node: levels[node[0]][node[1]]


def inclusion_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of a tree held in memory."""
    return inclusion_proof(index, len(leaves), subtree_hashes(leaves))


# ---------------------------------------------------------------- verification


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2. An empty tree includes nothing; an index outside the tree
    and a leaf that is not a SHA-256 hash never verify."""
    if not 0 <= index < size or len(leaf) != HASH_BYTES:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(
    first_size: int, second_size: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2: ``proof`` shows the tree of ``second_size`` leaves with
    ``second_root`` extends the one of ``first_size`` with ``first_root``. Consistency with
    an empty tree proves nothing, so ``first_size`` 0 never verifies."""
    if not 0 < first_size <= second_size:
        return False
    if first_size == second_size:
        return not proof and first_root == second_root
    if not proof:
        return False
    path = list(proof)
    if first_size & (first_size - 1) == 0:  # a power of two: the first tree is a subtree of the proof
        path.insert(0, first_root)
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first_root and sr == second_root
