"""Commands printed for the user to run next, spelled so that they work when pasted as printed.

A fresh clone installs ``multitag`` into ``.venv/bin``, which nothing puts on the PATH: a hint
that says ``multitag serve ...`` fails in the very shell that ran ``.venv/bin/multitag demo``.
Every hint is therefore built here, naming the program the way this shell reaches it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from rich.console import Console

PROGRAM = "multitag"


def _as_typed(path: Path) -> str:
    """``path`` as a shell runs it from the working folder: relative (with a slash) inside it."""
    if path.is_absolute():
        try:
            path = path.relative_to(Path.cwd())
        except ValueError:
            return str(path)
    text = str(path)
    return text if os.sep in text else f".{os.sep}{text}"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _running_the_cli(argv0: str) -> bool:
    """Whether this process is the ``multitag`` program (or ``python -m multitag``)."""
    path = Path(argv0)
    return path.stem == PROGRAM or (path.name == "__main__.py" and path.parent.name == PROGRAM)


def cli_prefix() -> list[str]:
    """The words that start the running ``multitag`` from this shell's working folder.

    The bare name when the PATH finds this very program; else the program's path (relative
    when under the working folder, e.g. ``.venv/bin/multitag``); else, when the library runs
    inside another program (a notebook, pytest), this interpreter with ``-m multitag``.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).stem == PROGRAM and Path(argv0).is_file():
        on_path = shutil.which(PROGRAM)
        if on_path and _same_file(on_path, argv0):
            return [PROGRAM]
        return [_as_typed(Path(argv0))]
    python = sys.executable or "python3"
    on_path = shutil.which(Path(python).name)
    if on_path and _same_file(on_path, python):
        return [Path(python).name, "-m", PROGRAM]
    return [_as_typed(Path(python)), "-m", PROGRAM]


def command(*args: str | os.PathLike) -> str:
    """A ``multitag`` command line to paste into this shell, e.g. ``command("serve", path)``;
    arguments are shell-quoted, so paths with spaces survive the paste."""
    return shlex.join([*cli_prefix(), *(os.fspath(a) for a in args)])


def print_command(console: Console, label: str, *args: str | os.PathLike, after: str = "") -> str:
    """Print ``label: <multitag command>`` on one line (never wrapped, never read as markup,
    so it pastes as printed) and return the command."""
    line = command(*args)
    console.print(f"{label}: {line}{after}", soft_wrap=True, markup=False, highlight=False)
    return line


def rerun_with(option: str, value: str) -> str | None:
    """This command line again with ``option`` set to ``value`` (e.g. a free ``--port``), or
    None when this process is not the ``multitag`` program (then its arguments are not ours)."""
    if not sys.argv or not _running_the_cli(sys.argv[0]):
        return None
    args, out, replaced = sys.argv[1:], [], False
    i = 0
    while i < len(args):
        if args[i] == option and i + 1 < len(args):
            out += [option, value]
            i, replaced = i + 2, True
            continue
        if args[i].startswith(option + "="):
            out.append(f"{option}={value}")
            replaced = True
        else:
            out.append(args[i])
        i += 1
    return command(*out, *([] if replaced else [option, value]))
