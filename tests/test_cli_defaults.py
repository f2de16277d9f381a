"""The CLI's option defaults are the library's: a model trained from the command line is the
model the benchmarks measured."""

from __future__ import annotations

import inspect

import pytest

from multitag import MultiTaskTagger
from multitag.cli import train_cmd
from multitag.cli_embed import embed_train
from multitag.embedding.model import Embedder

HANDLED_ELSEWHERE = {"cache_dir"}  # None on the CLI = the library's "default" cache


def _cli_defaults(command) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(command).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


@pytest.mark.parametrize(
    ("command", "estimator"), [(train_cmd, MultiTaskTagger), (embed_train, Embedder)]
)
def test_cli_defaults_match_the_library(command, estimator):
    library = estimator().get_params()
    cli = _cli_defaults(command)
    shared = sorted(set(cli) & set(library) - HANDLED_ELSEWHERE)
    assert len(shared) >= 8, shared  # the comparison covers the main settings
    # None on the CLI defers to the library constant (resolved in the command's body)
    differ = {n: (cli[n], library[n]) for n in shared if cli[n] not in (None, library[n])}
    assert not differ, f"CLI default != library default: {differ}"


def test_benchmarks_md_is_written_beside_its_bench_folder(tmp_path, monkeypatch):
    """A benchmark run with --out elsewhere must not overwrite the repo's BENCHMARKS.md."""
    from multitag.bench import write_benchmarks_md

    bench = tmp_path / "elsewhere" / "bench"
    bench.mkdir(parents=True)
    (bench / "study.md").write_text("## Study\n")
    (bench / "core.md").write_text("## Core\n")
    monkeypatch.chdir(tmp_path)
    write_benchmarks_md(bench)
    text = (bench.parent / "BENCHMARKS.md").read_text()
    assert text.index("## Core") < text.index("## Study")
    assert not (tmp_path / "BENCHMARKS.md").exists()
