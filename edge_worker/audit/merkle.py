"""RFC 6962 Merkle tree math for the audit log: leaf and node hashes, the frontier of
perfect subtrees an append extends, inclusion paths and their verification."""

from __future__ import annotations

import hashlib


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


Frontier = list[tuple[int, bytes]]  # (height, root) of the perfect subtrees, largest first


def extend_frontier(frontier: Frontier, leaf: bytes) -> Frontier:
    out = [*frontier, (0, leaf)]
    while len(out) >= 2 and out[-1][0] == out[-2][0]:
        (height, left), (_, right) = out[-2], out[-1]
        out[-2:] = [(height + 1, node_hash(left, right))]
    return out


def frontier_root(frontier: Frontier) -> bytes:
    """RFC 6962 MTH: the split point is the largest power of two below n, so folding the
    perfect subtrees from the right gives exactly the recursive definition."""
    if not frontier:
        return hashlib.sha256(b"").digest()
    root = frontier[-1][1]
    for _, subtree in reversed(frontier[:-1]):
        root = node_hash(subtree, root)
    return root


def tree_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH(D[n]) of the leaf hashes."""
    frontier: Frontier = []
    for leaf in leaves:
        frontier = extend_frontier(frontier, leaf)
    return frontier_root(frontier)


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_path(leaves: list[bytes], index: int) -> list[bytes]:
    """RFC 6962 PATH(m, D[n])."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return inclusion_path(leaves[:k], index) + [tree_root(leaves[k:])]
    return inclusion_path(leaves[k:], index - k) + [tree_root(leaves[:k])]


def verify_inclusion(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
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
