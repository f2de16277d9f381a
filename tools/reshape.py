"""Rewrite imports, dotted names and file paths from the flat layout to the sub-package layout.

Idempotent: run it again on any file (a branch made before the reshape, a doc) and only old
names change. Usage: ``python tools/reshape.py FILE_OR_DIR...`` (prints the files it changed).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# old module (under multitag.) -> new module
MOVES: dict[str, str] = {
    "io": "core.io",
    "progress": "core.progress",
    "runtime": "core.runtime",
    "params": "core.params",
    "faults": "core.faults",
    "locks": "core.locks",
    "integrity": "core.integrity",
    "next_step": "core.next_step",
    "_torchvision_compat": "vision.torchvision_shim",
    "backbones": "vision.backbones",
    "engines": "vision.engines",
    "engine_cache": "vision.engine_cache",
    "extraction": "vision.extraction",
    "features": "vision.features",
    "train": "training.loop",
    "finetune": "training.finetune",
    "tagger": "tagger.estimator",
    "tagging": "tagger.batch",
    "tagger_ensemble": "tagger.ensemble",
    "model_dir": "tagger.persistence",
    "export": "tagger.export",
    "held_out": "tagger.held_out",
    "evaluate": "evaluation.report",
    "metrics": "evaluation.metrics",
    "study": "research.study",
    "study_report": "research.study_report",
    "learning_curve": "research.learning_curve",
    "cli": "cli.main",
    "cli_catalog": "cli.catalog",
    "cli_common": "cli.common",
    "cli_embed": "cli.embed",
    "cli_study": "cli.study",
    "demo": "cli.demo",
    "bench": "bench.core",
    "bench_catalog": "bench.catalog",
    "bench_embed": "bench.embed",
    "bench_ensemble_memory": "bench.ensemble_memory",
    "bench_index": "bench.index",
    "bench_kmeans": "bench.kmeans",
    "bench_serve": "bench.serve",
    "bench_shift": "bench.shift",
    "bench_study": "bench.study",
}

# an old module whose name is now a package: do not rewrite when followed by its new submodule
_SUBMODULES: dict[str, set[str]] = {}
for _new in MOVES.values():
    _pkg, _sub = _new.split(".", 1)
    _SUBMODULES.setdefault(_pkg, set()).add(_sub.split(".")[0])


def _dotted(old: str) -> re.Pattern:
    guard = ""
    if old in _SUBMODULES:
        guard = r"(?!\.(?:" + "|".join(sorted(_SUBMODULES[old])) + r")\b)"
    return re.compile(r"\bmultitag\." + re.escape(old) + r"\b" + guard)


_PATTERNS = [(_dotted(old), "multitag." + MOVES[old]) for old in sorted(MOVES, key=len, reverse=True)]
_PATHS = [
    (re.compile(r"\bmultitag/" + re.escape(old) + r"\.py\b"), "multitag/" + new.replace(".", "/") + ".py")
    for old, new in MOVES.items()
]
_FROM_PKG = re.compile(r"^(?P<indent>[ \t]*)from multitag import (?P<names>[^(\n#]+?)(?P<comment>[ \t]*#.*)?$", re.M)


def _split_from_package(match: re.Match) -> str:
    indent, comment = match["indent"], match["comment"] or ""
    groups: dict[str, list[str]] = {}
    for part in (p.strip() for p in match["names"].split(",")):
        name = part.split(" as ")[0].strip()
        target = MOVES.get(name)
        if target is None:
            groups.setdefault("", []).append(part)
        else:
            package, module = target.rsplit(".", 1)
            alias = part.split(" as ")[1].strip() if " as " in part else None
            if module == name:
                groups.setdefault(package, []).append(part)
            else:
                groups.setdefault(package, []).append(f"{module} as {alias or name}")
    lines = []
    for package, names in groups.items():
        where = "multitag" + ("." + package if package else "")
        lines.append(f"{indent}from {where} import {', '.join(names)}")
    lines[0] += comment
    return "\n".join(lines)


def rewrite(text: str) -> str:
    text = _FROM_PKG.sub(_split_from_package, text)
    for pattern, new in _PATTERNS:
        text = pattern.sub(new, text)
    for pattern, new in _PATHS:
        text = pattern.sub(new, text)
    return text


def main(argv: list[str]) -> int:
    suffixes = {".py", ".md", ".toml", ".cfg", ".ini", ".yaml", ".yml", ".txt", ".html", ".js"}
    for arg in argv:
        root = Path(arg)
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in files:
            if root.is_dir() and path.suffix not in suffixes and path.name not in {"Makefile", "run"}:
                continue
            try:
                text = path.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            new = rewrite(text)
            if new != text:
                path.write_text(new)
                print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
