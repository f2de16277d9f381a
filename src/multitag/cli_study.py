"""``multitag study CONFIG``: the transfer-learning study from a YAML grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``study`` command to the ``multitag`` app."""

    @app.command("study")
    def study_cmd(
        config: Annotated[Path, typer.Argument(help="Study YAML (see examples/study.yaml).")],
        out: Annotated[Path, typer.Option("--out", help="Study folder (resumable).")] = Path(
            "artifacts/study"
        ),
    ) -> None:
        """Backbones x freeze points x sharing x loss balancing: table + HTML report."""
        from multitag.cli_common import _fail, out_console
        from multitag.study import StudyConfig, run_study

        if not config.is_file():
            _fail(f"{config}: no such study config")
        try:
            cfg = StudyConfig.load(config)
            table = run_study(cfg, out)
        except (ValueError, FileNotFoundError) as err:
            _fail(str(err))
            return
        cols = [c for c in table.columns if not c.endswith("_acc")]
        out_console.print(table[cols].to_string(index=False))
        out_console.print(f"report: {out / 'report.html'}  table: {out / 'study.csv'}")
