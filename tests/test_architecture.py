"""The package's shape holds: layers and no cycles (import-linter), no private names shared
across modules, and the torch-free modules really load without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH_FREE = [
    "multitag",
    "multitag.core.io",
    "multitag.core.locks",
    "multitag.core.integrity",
    "multitag.evaluation.metrics",
    "multitag.evaluation.report",
    "multitag.embedding.index",
    "multitag.embedding.kmeans",
    "multitag.embedding.cluster",
    "multitag.catalog.store",
]


def test_import_contracts_hold():
    # in a subprocess: import-linter's logging set-up disables every logger created before it
    code = (
        "from importlinter.cli import lint_imports; "
        f"raise SystemExit(lint_imports(config_filename={str(REPO / 'pyproject.toml')!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("multitag"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(
                        f"{path.relative_to(REPO)}:{node.lineno} {node.module}.{alias.name}"
                    )
    return found


def test_no_private_name_is_imported_across_modules():
    files = sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "tests").rglob("*.py"))
    found = [hit for path in files for hit in _private_imports(path)]
    assert not found, "make these public or move them:\n" + "\n".join(found)


def test_private_import_scan_sees_a_private_import(tmp_path, monkeypatch):
    """The scan above can fail: it flags a private name imported from a multitag module."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    source = tmp_path / "m.py"
    source.write_text("from multitag.core.io import _helper, write_json\nfrom os import _exit\n")
    assert _private_imports(source) == ["m.py:1 multitag.core.io._helper"]


def test_torch_free_modules_load_without_torch():
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in TORCH_FREE)
        + "heavy = sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules)\n"
        + "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "", f"loaded {result.stdout.strip()}"
