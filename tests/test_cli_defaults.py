"""The CLI's option defaults are the library's: a model trained from the command line is the
model the benchmarks measured."""

from __future__ import annotations

import inspect

import pytest

from multitag import MultiTaskTagger
from multitag.cli.embed import embed_train
from multitag.cli.main import train_cmd
from multitag.embedding.model import Embedder
from multitag.tagger.config import flat_settings

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
    # the tagger's settings by their flat names: the CLI's flags
    est = estimator()
    library = flat_settings(est) if estimator is MultiTaskTagger else est.get_params()
    cli = _cli_defaults(command)
    shared = sorted(set(cli) & set(library) - HANDLED_ELSEWHERE)
    assert len(shared) >= 8, shared  # the comparison covers the main settings
    # None on the CLI defers to the library constant (resolved in the command's body)
    differ = {n: (cli[n], library[n]) for n in shared if cli[n] not in (None, library[n])}
    assert not differ, f"CLI default != library default: {differ}"


def test_benchmarks_md_is_written_beside_its_bench_folder(tmp_path, monkeypatch):
    """A benchmark run with --out elsewhere must not overwrite the repo's BENCHMARKS.md."""
    from multitag.bench.core import write_benchmarks_md

    bench = tmp_path / "elsewhere" / "bench"
    bench.mkdir(parents=True)
    (bench / "study.md").write_text("## Study\n")
    (bench / "core.md").write_text("## Core\n")
    monkeypatch.chdir(tmp_path)
    write_benchmarks_md(bench)
    text = (bench.parent / "BENCHMARKS.md").read_text()
    assert text.index("## Core") < text.index("## Study")
    assert not (tmp_path / "BENCHMARKS.md").exists()


def test_a_cpu_without_bf16_gets_its_own_core_section(tmp_path):
    """A run on a slower CPU must not replace the reference numbers the targets refer to."""
    import json
    from pathlib import Path

    from multitag.bench.core import core_markdown, core_stem, write_benchmarks_md

    reference = json.loads((Path(__file__).parents[1] / "bench" / "core.json").read_text())
    other = {**reference, "machine": {**reference["machine"], "bf16": False}}
    assert (core_stem(True), core_stem(False)) == ("core", "core-no-bf16")
    bench = tmp_path / "bench"
    bench.mkdir()
    for r in (reference, other):
        md = core_markdown(r, {"tasks": r["val_metrics"]})
        (bench / f"{core_stem(r['machine']['bf16'])}.md").write_text(md)
    (bench / "embed.md").write_text("## Embeddings\n")
    write_benchmarks_md(bench)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    first, second = text.index("## Core tagger ("), text.index("## Core tagger on a CPU without")
    assert first < second < text.index("## Embeddings")
    assert "(bf16 autocast, channels_last)" in text[first:second]
    assert "(fp32, channels_last)" in text[second:]
