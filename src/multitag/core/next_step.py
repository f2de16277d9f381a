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
SOURCE_ROOT = Path(__file__).resolve().parents[3]  # the checkout, when run from one


def _relative(path: Path) -> str:
    """``path`` relative to the working folder when inside it, else as it is."""
    if path.is_absolute():
        try:
            path = path.relative_to(Path.cwd())
        except ValueError:
            return str(path)
    return str(path)


def _as_typed(path: Path) -> str:
    """``path`` as a shell runs it from the working folder: relative (with a slash) inside it."""
    text = _relative(path)
    return text if os.sep in text or text == "." else f".{os.sep}{text}"


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
    if Path(argv0).stem == PROGRAM and Path(argv0).is_file():  # the installed script
        on_path = shutil.which(PROGRAM)
        if on_path and _same_file(on_path, argv0):
            return [PROGRAM]
        return [_as_typed(Path(argv0))]
    return [_python(), "-m", PROGRAM]


def _python() -> str:
    """This interpreter, as this shell reaches it."""
    python = sys.executable or "python3"
    on_path = shutil.which(Path(python).name)
    if on_path and _same_file(on_path, python):
        return Path(python).name
    return _as_typed(Path(python))


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


def _pip_install(*requirements: str) -> str:
    """``python -m pip install`` into this very environment (a bare ``pip`` may be another
    one's), pinned by the checkout's constraints.txt when multitag runs from a checkout."""
    words = [_python(), "-m", "pip", "install"]
    constraints = SOURCE_ROOT / "constraints.txt"
    if (SOURCE_ROOT / "pyproject.toml").is_file() and constraints.is_file():
        words += ["-c", _relative(constraints)]
    return shlex.join([*words, *requirements])


def install_extra(extra: str) -> str:
    """The command that adds the optional dependencies ``extra`` (e.g. ``serve``): from the
    checkout multitag runs from (``-e .[serve]``), else from the package index."""
    if (SOURCE_ROOT / "pyproject.toml").is_file():
        return _pip_install("-e", f"{_as_typed(SOURCE_ROOT)}[{extra}]")  # a path, not a name
    return _pip_install(f"{PROGRAM}[{extra}]")


def install_package(name: str) -> str:
    """The command that installs the package ``name`` into this environment."""
    return _pip_install(name)
