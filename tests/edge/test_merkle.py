"""The shared RFC 6962 math (nexus_wire/merkle.py) against the published test vectors of
transparency-dev/merkle (tests/edge/data/rfc6962, Apache-2.0): every valid proof verifies,
every tampered one fails, and the proofs we generate are the published ones."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from nexus_wire.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_path,
    inclusion_proof,
    leaf_hash,
    subtree_hashes,
    tree_root,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "data" / "rfc6962"
LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]


def _cases(kind: str) -> list[tuple[str, dict[str, Any]]]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    return [(str(f.relative_to(VECTORS)), json.loads(f.read_text())) for f in files]


def _b(value: str) -> bytes:
    return base64.b64decode(value)


def _proof(case: dict[str, Any]) -> list[bytes]:
    return [_b(p) for p in case["proof"] or []]


INCLUSION, CONSISTENCY = _cases("inclusion"), _cases("consistency")
HASHES = [leaf_hash(bytes.fromhex(x)) for x in LEAVES]


def test_every_vector_is_here() -> None:
    assert len(INCLUSION) == 98 and len(CONSISTENCY) == 98
    assert sum(not c["wantErr"] for _, c in INCLUSION) == 6 and sum(not c["wantErr"] for _, c in CONSISTENCY) == 6


@pytest.mark.parametrize("name, case", INCLUSION, ids=[n for n, _ in INCLUSION])
def test_inclusion_vector(name: str, case: dict[str, Any]) -> None:
    verified = verify_inclusion(_b(case["leafHash"]), case["leafIdx"], case["treeSize"], _proof(case), _b(case["root"]))
    assert verified is not case["wantErr"], case["desc"]


@pytest.mark.parametrize("name, case", CONSISTENCY, ids=[n for n, _ in CONSISTENCY])
def test_consistency_vector(name: str, case: dict[str, Any]) -> None:
    verified = verify_consistency(case["size1"], case["size2"], _b(case["root1"]), _b(case["root2"]), _proof(case))
    assert verified is not case["wantErr"], case["desc"]


def test_our_proofs_are_the_published_ones() -> None:
    happy = [c for _, c in INCLUSION if not c["wantErr"] and c["treeSize"] <= len(HASHES) and c["leafHash"]]
    for case in happy:
        leaves = HASHES[: case["treeSize"]]
        if leaves[case["leafIdx"]] != _b(case["leafHash"]):
            continue  # a single-entry case over another leaf
        assert inclusion_path(leaves, case["leafIdx"]) == _proof(case)
        assert tree_root(leaves) == _b(case["root"])
    for case in (c for _, c in CONSISTENCY if not c["wantErr"] and c["size1"] < c["size2"]):
        assert consistency_proof(case["size1"], case["size2"], subtree_hashes(HASHES)) == _proof(case), case
        assert tree_root(HASHES[: case["size2"]]) == _b(case["root2"])


def _flip(proof: list[bytes], i: int) -> list[bytes]:
    return [bytes([p[0] ^ 1]) + p[1:] if j == i else p for j, p in enumerate(proof)]


def test_every_generated_proof_verifies_and_every_changed_one_fails() -> None:
    leaves = [leaf_hash(b"%d" % i) for i in range(70)]
    subtree = subtree_hashes(leaves)
    roots = [EMPTY_ROOT] + [tree_root(leaves[:n]) for n in range(1, len(leaves) + 1)]
    for second in range(1, len(leaves) + 1):
        for index in range(second):
            path = inclusion_proof(index, second, subtree)
            assert verify_inclusion(leaves[index], index, second, path, roots[second])
            assert all(
                not verify_inclusion(leaves[index], index, second, _flip(path, i), roots[second])
                for i in range(len(path))
            )
        for first in range(1, second + 1):
            proof = consistency_proof(first, second, subtree)
            assert len(proof) <= 2 * second.bit_length()
            assert verify_consistency(first, second, roots[first], roots[second], proof), (first, second)
            assert all(
                not verify_consistency(first, second, roots[first], roots[second], _flip(proof, i))
                for i in range(len(proof))
            )
            if first < second:
                # a first tree that was rewritten (another leaf 0) is not consistent with the second
                assert not verify_consistency(
                    first, second, tree_root([leaf_hash(b"x"), *leaves[1:first]]), roots[second], proof
                )
                assert not verify_consistency(first, second, roots[first], roots[second], proof[:-1])


def test_an_empty_tree_includes_nothing_and_bounds_hold() -> None:
    assert not verify_inclusion(EMPTY_ROOT, 0, 0, [], EMPTY_ROOT)
    assert not verify_inclusion(b"", 0, 1, [], b"")
    leaf = leaf_hash(b"a")
    assert verify_inclusion(leaf, 0, 1, [], leaf)
    assert not verify_inclusion(leaf, 1, 1, [], leaf) and not verify_inclusion(leaf, -1, 1, [], leaf)
    assert not verify_consistency(0, 1, EMPTY_ROOT, leaf, [])
    with pytest.raises(ValueError):
        inclusion_proof(1, 1, subtree_hashes([leaf]))
    with pytest.raises(ValueError):
        consistency_proof(0, 1, subtree_hashes([leaf]))
