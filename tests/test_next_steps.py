"""Commands multitag prints for the user to run next work when pasted as printed, in the same
shell, on a fresh clone where nothing put ``.venv/bin`` on the PATH."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from multitag.core.next_step import command, install_extra, install_package

from .catalog_util import sample_rows
from .conftest import FASHION, REPO, requires_fashion

VENV_BIN = Path(sys.executable).parent  # the environment running the tests
ENTRY = VENV_BIN / "multitag"


def _fake_program(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def _first_word_resolves(printed: str, cwd: Path, path_env: str) -> bool:
    word = shlex.split(printed)[0]
    if os.sep in word:
        return (cwd / word).is_file()
    return shutil.which(word, path=path_env) is not None


@pytest.mark.parametrize("on_path", [False, True])
def test_program_under_the_working_folder(tmp_path, monkeypatch, on_path):
    program = _fake_program(tmp_path / ".venv" / "bin" / "multitag")
    path_env = str(program.parent) if on_path else str(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", path_env)
    monkeypatch.setattr(sys, "argv", [".venv/bin/multitag", "demo"])
    printed = command("serve", "artifacts/demo/catalog", "--model", "my model")
    expected = "multitag" if on_path else ".venv/bin/multitag"
    assert printed == f"{expected} serve artifacts/demo/catalog --model 'my model'"
    assert _first_word_resolves(printed, tmp_path, path_env)


def test_program_given_by_absolute_path(tmp_path, monkeypatch):
    program = _fake_program(tmp_path / "venv" / "bin" / "multitag")
    monkeypatch.chdir(tmp_path / "venv")
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(sys, "argv", [str(program)])
    assert command("serve", "c").split()[0] == "bin/multitag"  # under the working folder
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert command("serve", "c") == f"{shlex.quote(str(program))} serve c"


def test_inside_another_program_the_printed_command_runs(tmp_path, monkeypatch):
    """From pytest or a notebook: this interpreter with -m multitag, which really starts."""
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "notebook.py")])
    printed = command("serve", "--help")
    assert shlex.split(printed)[1:3] == ["-m", "multitag"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *sys.path])}
    done = subprocess.run(printed, shell=True, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--model" in done.stdout


def _cli_tree() -> tuple[dict, set[str]]:
    """``{command: {subcommand: ...}}`` and every ``--option`` of the multitag command line."""
    import typer

    from multitag.cli.main import app

    options: set[str] = set()

    def walk(cmd) -> dict:
        for param in cmd.params:
            options.update(o for o in param.opts + param.secondary_opts if o.startswith("--"))
        return {name: walk(sub) for name, sub in getattr(cmd, "commands", {}).items()}

    return walk(typer.main.get_command(app)), options


def _message_strings() -> list[tuple[str, str]]:
    """Every string constant of the package but the benchmark scripts (their own options)."""
    found = []
    for path in sorted((REPO / "src" / "multitag").rglob("*.py")):
        if path.name.startswith("bench"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append((path.name, node.value))
    return found


def test_every_option_and_command_a_message_names_exists():
    """Errors and hints that suggest `--an-option` or `multitag a command` name real ones."""
    tree, options = _cli_tree()
    bad = []
    for where, text in _message_strings():
        for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text):
            if option not in options:
                bad.append(f"{where}: {option} in {text[:60]!r}")
        for words in re.findall(r"`multitag ((?:[a-z][a-z-]* ?)+)", text):
            level = tree
            for word in words.split():
                if not level:
                    break
                if word not in level:
                    bad.append(f"{where}: multitag {words.strip()!r} in {text[:60]!r}")
                    break
                level = level[word]
    assert not bad, "\n".join(bad)


def test_install_hints_name_this_environment_and_real_extras(monkeypatch):
    """`pip install 'multitag[serve]'` in a fresh clone's shell would reach another pip (or a
    stranger's package of that name): hints run this interpreter's pip on this checkout."""
    from importlib.metadata import metadata

    monkeypatch.chdir(REPO)
    extras = metadata("multitag").get_all("Provides-Extra")
    called = set()
    for path in (REPO / "src" / "multitag").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "install_extra":
                called.add(node.args[0].value)
    assert called and called <= set(extras), called - set(extras)
    words = shlex.split(install_extra("serve"))
    assert words[1:] == ["-m", "pip", "install", "-c", "constraints.txt", "-e", ".[serve]"]
    pip = subprocess.run([words[0], "-m", "pip", "--version"], capture_output=True, text=True)
    assert pip.returncode == 0 and str(Path(sys.prefix).resolve()) in str(
        Path(pip.stdout.split(" from ")[1].split(" (")[0]).resolve()
    ), pip.stdout  # the pip of the environment multitag runs in
    assert shlex.split(install_package("timm"))[-3:] == ["-c", "constraints.txt", "timm"]
    elsewhere = REPO.parent
    monkeypatch.chdir(elsewhere)
    assert shlex.split(install_extra("fast"))[-1] == f"./{REPO.name}[fast]"  # a path to pip


def test_a_taken_port_fails_at_once_with_a_command_on_a_free_one(tmp_path):
    """`make explore` on a busy port: refused before any build, with the same command on a
    free port, which gets past the check when pasted as printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *sys.path])}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["demo", "--explore", "--data-root", "no data", "--out", "out", "--port", str(port)]
        first = subprocess.run(
            [sys.executable, "-m", "multitag", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert first.returncode == 2, first.stderr
        assert f"127.0.0.1:{port} is already in use" in first.stderr
        printed = re.search(r"rerun on a free port, (.+)", first.stderr).group(1).strip()
        words = shlex.split(printed)
        assert words[:3] == [sys.executable, "-m", "multitag"]
        free = words[words.index("--port") + 1]
        assert free != str(port) and words[3:] == [*args[:-1], free]
        assert not (tmp_path / "out").exists()  # nothing built before the check
        second = subprocess.run(
            printed, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
    assert "already in use" not in second.stderr
    assert "no data/styles.csv not found" in second.stderr  # got on to the demo itself
    hint = re.search(r"e\.g\. (.+)", second.stderr).group(1).strip()
    assert shlex.split(hint)[3:] == ["demo", "--data-root", "PATH/TO/fashion-products"]


# ------------------------------------------------------------------ real commands, real server


def _fresh_shell_env() -> dict[str, str]:
    """The environment of a fresh clone's shell: the venv's bin is not on the PATH."""
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != VENV_BIN
    )
    pythonpath = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PATH": path, "PYTHONPATH": pythonpath.rstrip(os.pathsep)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_fetch(shell_line: str, cwd: Path, port: int, log: Path) -> dict:
    """Run ``shell_line`` (a server) until ``/`` answers, fetch ``/`` and ``/topics``, stop it."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            shell_line,
            shell=True,
            cwd=cwd,
            env=_fresh_shell_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the shell and the server stop together
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer:\n{log.read_text()[-3000:]}")
            try:
                page = httpx.get(f"{base}/", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        topics = httpx.get(f"{base}/topics", timeout=30)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    return {"page": page, "topics": topics, "log": log.read_text()}


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory, trained_tagger, fashion_frame) -> Path:
    """A fresh-clone folder: ``.venv`` (this environment), ``data/`` (styles.csv + images),
    and a demo output ``out/`` with a model and the manifest but no catalogue yet."""
    if not ENTRY.is_file():
        pytest.skip(f"{ENTRY} not found: the package is not installed in {VENV_BIN.parent}")
    root = tmp_path_factory.mktemp("clone")
    (root / ".venv").symlink_to(VENV_BIN.parent)
    rows = sample_rows(fashion_frame)
    (root / "data").mkdir()
    rows.drop(columns=["path"]).to_csv(root / "data" / "styles.csv", index=False)
    (root / "data" / "images").symlink_to(FASHION / "images")
    trained_tagger.save(root / "out" / "model")
    rows.drop(columns=["path"]).to_csv(root / "out" / "manifest.csv", index=False)
    return root


@pytest.mark.slow
@requires_fashion
def test_catalog_build_prints_a_serve_command_that_works(demo_like):
    """`.venv/bin/multitag catalog build ...` as a fresh clone runs it; its printed serve
    command, pasted as printed (plus a free port), serves the explorer and the topics."""
    build = subprocess.run(
        ".venv/bin/multitag catalog build out/model out/manifest.csv --images data/images "
        "--out cat --topics 4 --clusters 4",
        shell=True,
        cwd=demo_like,
        env=_fresh_shell_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    printed = re.search(r"explore it: (.+)", build.stderr).group(1).strip()
    assert printed == ".venv/bin/multitag serve cat --model out/model"
    port = _free_port()
    got = _serve_and_fetch(f"{printed} --port {port}", demo_like, port, demo_like / "serve.log")
    assert got["page"].status_code == 200 and "<html" in got["page"].text.lower()
    assert got["topics"].status_code == 200
    assert len(got["topics"].json()) == 4


@pytest.mark.slow
@requires_fashion
def test_make_explore_builds_the_missing_catalogue_then_serves(demo_like):
    """`make explore`'s own recipe (read with make -n) on a demo output without a catalogue:
    builds it, prints the URL, serves / and /topics."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    port = _free_port()
    dry = subprocess.run(
        [
            "make",
            "-n",
            "-C",
            str(REPO),
            "explore",
            f"VENV={VENV_BIN.parent}",
            f"DATA={demo_like / 'data'}",
            f"DEMO={demo_like / 'out'}",
            f"PORT={port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    recipe = [line for line in dry.stdout.splitlines() if "demo --explore" in line]
    assert len(recipe) == 1, dry.stdout
    assert not (demo_like / "out" / "catalog" / "catalog.json").exists()
    got = _serve_and_fetch(recipe[0], REPO, port, demo_like / "explore.log")
    assert f"explorer: http://127.0.0.1:{port}/" in got["log"]
    assert got["page"].status_code == 200 and "<html" in got["page"].text.lower()
    assert got["topics"].status_code == 200 and got["topics"].json()
    assert (demo_like / "out" / "catalog" / "catalog.json").is_file()


@pytest.mark.slow
@requires_fashion
def test_explore_without_the_demo_manifest_names_the_demo_command(demo_like, tmp_path):
    from multitag.cli.demo import prepare_explore

    out = tmp_path / "out"
    out.mkdir()
    (out / "model").symlink_to(demo_like / "out" / "model")
    with pytest.raises(SystemExit) as stop:
        prepare_explore(demo_like / "data", out)
    printed = str(stop.value.code).split("run the demo again, ")[1]
    words = shlex.split(printed)
    assert words[words.index("demo") :] == [
        "demo", "--data-root", str(demo_like / "data"), "--out", str(out)
    ]  # fmt: skip
    assert not (out / "catalog").exists()
