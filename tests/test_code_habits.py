"""The habits the code keeps, checked by the test command: lint, format, types, import contracts.

Each check runs the real tool on the whole tree, so a red test names the file and line to fix.
The dependency rule itself lives in pyproject.toml ([tool.importlinter]); what import-linter
cannot say (which edge modules federated/ may use, tests never importing tests) is checked here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: what federated/ may import of the edge: the local store it trains from and the audit log it writes
EDGE_PUBLIC = ("edge_worker.store", "edge_worker.audit")


def _run(*argv: str) -> None:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"


def test_ruff_lint_is_clean() -> None:
    _run(sys.executable, "-m", "ruff", "check", "--no-cache", ".")


def test_ruff_format_is_clean() -> None:
    _run(sys.executable, "-m", "ruff", "format", "--check", "--no-cache", ".")


def test_mypy_is_clean() -> None:
    _run(sys.executable, "-m", "mypy")


def test_import_contracts_are_kept() -> None:
    _run(str(BIN / "lint-imports"), "--no-cache")


def test_federated_uses_only_the_edges_public_interfaces() -> None:
    graph = grimp.build_graph("federated", "edge_worker")
    offending = []
    for importer in sorted(m for m in graph.modules if m.startswith("federated")):
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported.startswith("edge_worker") and not imported.startswith(EDGE_PUBLIC):
                offending.append(f"{importer} -> {imported}")
    assert not offending, f"federated/ reaches into edge internals: {offending}"


def test_no_test_module_imports_another() -> None:
    tests = {p.stem for p in (ROOT / "tests").rglob("test_*.py")}
    offending = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offending += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.rsplit(".", 1)[-1] in tests]
    assert not offending, f"tests import test modules (shared helpers go to tests/support/): {offending}"
