"""How tag quality grows with the number of labelled photos: one learning curve per task.

:func:`learning_curve` extracts (or reads cached) features once, keeps the tagger's own
validation split fixed (copies of a photo on one side) and fits fresh heads, exactly as
``fit`` would, on nested random subsets of its training rows: for each seed, a permutation of
the training rows whose first ``fraction * n`` rows train the heads. Every size is scored on
the same validation rows. Those rows also pick the heads' best epoch, as in ``fit``, so the
absolute scores carry the same slight optimism as the tagger's own validation report; the
differences between sizes do not depend on it.

:meth:`LearningCurve.extrapolate` fits ``1 - F1 = c + a * n**-b`` (a power law with a floor;
e.g. Hestness et al. 2017) to each task's mean over seeds and reports the gain of the last
doubling that was measured, the gain the fit predicts for the next one, and the number of
labelled rows a target would need if the curve keeps its shape. Few points determine the
floor ``c`` poorly: read the doubling gains first and the row counts as an order of magnitude.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from multitag.core.progress import bar
from multitag.evaluation.report import report_from_arrays

DEFAULT_FRACTIONS = (0.0625, 0.125, 0.25, 0.5, 1.0)


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    out = sorted({float(f) for f in fractions})
    if not out or any(not 0 < f <= 1 for f in out):
        raise ValueError(
            f"fractions: shares of the training rows in (0, 1], e.g. 0.25,0.5,1; got "
            f"{list(fractions)}"
        )
    return out


def check_targets(targets: Mapping[str, float] | None, tasks: Sequence[str]) -> dict:
    """``targets`` as ``{task: float}``; ``ValueError`` naming any task not in ``tasks``."""
    targets = dict(targets or {})
    unknown = sorted(set(targets) - set(tasks))
    if unknown:
        raise ValueError(
            f"targets name {unknown}, which are not among the tasks {list(tasks)}: "
            "spell them as the curve's task columns"
        )
    return {task: float(value) for task, value in targets.items()}


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """Error ``c + a * n**-b`` (``c``: the floor more rows of this kind cannot go below)."""
    return c + a * np.power(n, -b)


def fit_power_law(n: Sequence[float], error: Sequence[float]) -> dict | None:
    """Least-squares ``(a, b, c)`` of :func:`power_law` for ``error`` at sizes ``n``, or None
    when there are fewer than 3 sizes or the error does not fall with ``n``."""
    from scipy.optimize import OptimizeWarning, curve_fit

    n, error = np.asarray(n, float), np.asarray(error, float)
    if len(n) < 3 or error[-1] >= error[0]:
        return None
    lowest = float(error.min())
    b0 = 0.5
    a0 = max((error[0] - lowest / 2) * n[0] ** b0, 1e-6)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # the covariance is not used
            (a, b, c), _ = curve_fit(
                power_law, n, error, p0=(a0, b0, lowest / 2),
                bounds=([0.0, 0.01, 0.0], [np.inf, 3.0, lowest]), maxfev=20000,
            )  # fmt: skip
    except (RuntimeError, ValueError):
        return None
    return {"a": float(a), "b": float(b), "c": float(c)}


def rows_for_target(fit: Mapping[str, float], target: float) -> float | None:
    """Training rows at which the fitted curve reaches weighted F1 ``target``; None when the
    fitted floor lies above ``1 - target`` (more rows of this kind would not get there)."""
    gap = (1.0 - target) - fit["c"]
    if gap <= 0:
        return None
    return float((fit["a"] / gap) ** (1.0 / fit["b"]))


@dataclass
class LearningCurve:
    """Scores per (fraction, seed, task) from :func:`learning_curve`.

    ``scores`` columns: ``fraction``, ``n_train``, ``seed``, ``task``, ``weighted_f1``,
    ``accuracy``; ``n_val``: the validation rows every size was scored on.
    """

    scores: pd.DataFrame
    n_val: int
    settings: dict = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """Mean and standard deviation over seeds per task and training size."""
        g = self.scores.groupby(["task", "n_train"], sort=False)
        out = g.agg(
            fraction=("fraction", "first"),
            weighted_f1=("weighted_f1", "mean"),
            weighted_f1_std=("weighted_f1", "std"),
            accuracy=("accuracy", "mean"),
            seeds=("seed", "nunique"),
        )
        return out.reset_index().fillna({"weighted_f1_std": 0.0})

    def extrapolate(self, targets: Mapping[str, float] | None = None) -> pd.DataFrame:
        """Per task: weighted F1 at the largest size, the last measured doubling's gain, the
        power-law fit, its predicted gain for one more doubling and, for each task with a
        target, the training rows the fit says the target needs. Raises ``ValueError`` when
        ``targets`` names a task the curve did not measure."""
        targets = check_targets(targets, list(self.scores["task"].unique()))
        rows = []
        for task, s in self.summary().groupby("task", sort=False):
            s = s.sort_values("n_train")
            n, f1 = s["n_train"].to_numpy(float), s["weighted_f1"].to_numpy()
            half = np.isclose(n, n[-1] / 2)
            fit = fit_power_law(n, 1.0 - f1)
            row = {
                "task": task,
                "n_train": int(n[-1]),
                "weighted_f1": float(f1[-1]),
                "last_doubling_gain": float(f1[-1] - f1[half][0]) if half.any() else None,
                "next_doubling_gain": None,
                "fitted_ceiling": None,
                "target": None,
                "rows_for_target": None,
            }
            if fit:
                now, later = power_law(np.array([n[-1], 2 * n[-1]]), **fit)
                row["next_doubling_gain"] = float(now - later)
                row["fitted_ceiling"] = 1.0 - fit["c"]
                row.update({f"fit_{k}": v for k, v in fit.items()})
            if targets and task in targets:
                row["target"] = float(targets[task])
                if f1[-1] >= targets[task]:
                    row["rows_for_target"] = int(n[-1])
                elif fit:
                    needed = rows_for_target(fit, targets[task])
                    row["rows_for_target"] = None if needed is None else int(math.ceil(needed))
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self, targets: Mapping[str, float] | None = None) -> bytes:
        """PNG: weighted F1 against training rows (log scale), one line per task with its
        spread over seeds, the power-law fit dashed, targets dotted."""
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

        summary, extra = self.summary(), self.extrapolate(targets).set_index("task")
        fig = Figure(figsize=(8, 5), dpi=110)
        ax = fig.add_subplot()
        for i, (task, s) in enumerate(summary.groupby("task", sort=False)):
            colour = f"C{i % 10}"
            s = s.sort_values("n_train")
            ax.errorbar(
                s["n_train"], s["weighted_f1"], yerr=s["weighted_f1_std"], marker="o",
                color=colour, label=task, capsize=3,
            )  # fmt: skip
            if "fit_a" in extra.columns and pd.notna(extra.loc[task].get("fit_a")):
                fit = {k: extra.loc[task, f"fit_{k}"] for k in "abc"}
                grid = np.geomspace(s["n_train"].min(), 4 * s["n_train"].max(), 60)
                ax.plot(grid, 1 - power_law(grid, **fit), "--", color=colour, alpha=0.6)
            if targets and task in targets:
                ax.axhline(targets[task], color=colour, linestyle=":", alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training rows (log scale)")
        ax.set_ylabel(f"weighted F1 on {self.n_val} validation rows")
        ax.set_title("Learning curves (dashed: power-law fit, dotted: targets)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        return buf.getvalue()

    def to_markdown(self, targets: Mapping[str, float] | None = None) -> str:
        """A table: one row per training size, one column per task (weighted F1, bold where
        a target is met), then the last doubling's gain, the fitted next one and the rows
        each target needs (× the largest size measured)."""
        wide = self.summary().pivot(index="n_train", columns="task", values="weighted_f1")
        extra = self.extrapolate(targets).set_index("task")
        tasks = list(extra.index)
        targets = targets or {}

        def cell(task: str, f1: float) -> str:
            met = task in targets and f1 >= targets[task]
            return f"**{f1:.4f}**" if met else f"{f1:.4f}"

        def gain(value) -> str:
            return "" if value is None or pd.isna(value) else f"{value:+.4f}"

        def needed(task: str) -> str:
            if task not in targets:
                return ""
            n, top = extra.loc[task, "rows_for_target"], extra.loc[task, "n_train"]
            if extra.loc[task, "weighted_f1"] >= targets[task]:
                return "met"
            if n is None or pd.isna(n):
                return "not on this curve"
            return f"{int(n):,} ({n / top:.1f}×)"

        lines = [
            "| training rows | " + " | ".join(tasks) + " |",
            "|---:|" + "---:|" * len(tasks),
        ]
        for n_train, row in wide.sort_index().iterrows():
            lines.append(f"| {n_train:,} | " + " | ".join(cell(t, row[t]) for t in tasks) + " |")
        last = [gain(extra.loc[t, "last_doubling_gain"]) for t in tasks]
        lines.append("| gain of the last doubling | " + " | ".join(last) + " |")
        nxt = [gain(extra.loc[t, "next_doubling_gain"]) for t in tasks]
        lines.append("| next doubling, fitted | " + " | ".join(nxt) + " |")
        if targets:
            lines.append("| target | " + " | ".join(f"{targets.get(t, '')}" for t in tasks) + " |")
            lines.append("| rows the target needs | " + " | ".join(needed(t) for t in tasks) + " |")
        return "\n".join(lines) + "\n"

    def save(self, out: str | Path, targets: Mapping[str, float] | None = None) -> Path:
        """Write ``learning_curve.csv`` (every score), ``learning_curve.json`` (settings,
        summary, extrapolation), ``learning_curve.md`` (:meth:`to_markdown`) and
        ``learning_curve.png`` into ``out``."""
        from multitag.core.io import atomic_path, write_json, write_text

        extra = self.extrapolate(targets)  # checks the targets before anything is written
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "learning_curve.csv", self.scores.to_csv(index=False))
        doc = {
            "settings": self.settings,
            "n_val": self.n_val,
            "summary": self.summary().to_dict(orient="records"),
            "extrapolation": json.loads(extra.to_json(orient="records")),
        }
        write_json(out / "learning_curve.json", doc)
        write_text(out / "learning_curve.md", self.to_markdown(targets))
        with atomic_path(out / "learning_curve.png") as tmp:
            tmp.write_bytes(self.plot(targets))
        return out


def learning_curve(
    tagger,
    frame: pd.DataFrame,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: int = 2,
) -> LearningCurve:
    """Weighted F1 and accuracy per task for heads trained on growing shares of the labelled
    training rows of ``frame`` (see the module docstring). ``tagger`` is an unfitted
    :class:`~multitag.MultiTaskTagger` with a frozen backbone: its settings (backbone,
    framing, heads, epochs, split) are what is measured, on the photos alone: its extra
    training views (``features.views``) are not added, the curve is about labelled photos. It
    is left with the untrained heads of its preparation, so fit it afterwards to use it."""
    fractions = _check_fractions(fractions)
    training = tagger.settings("training")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"seeds: the number of subset draws per size, an int >= 1, not {seeds!r}")
    if training.freeze != "all":
        raise ValueError(
            "learning_curve measures heads on frozen features; "
            f"training.freeze={training.freeze!r} would fine-tune the backbone once per size "
            "and seed. Use freeze='all'."
        )
    if training.refit:
        raise ValueError(
            "learning_curve scores every size on the val split; training.refit=True would "
            "train on it. Use refit=False (the curve then also says what a refit on train + val "
            "buys)."
        )
    data = tagger.prepare_fit(frame)
    feats, targets, tasks = data.features.features, data.targets, tagger.tasks_
    train, val = data.train_rows, data.val_rows
    if len(val) == 0:
        raise ValueError("learning_curve needs validation rows: set val_fraction > 0")
    sizes = [max(1, round(f * len(train))) for f in fractions]
    records = []
    with bar(
        "learning curve", len(sizes) * seeds, enabled=tagger.settings("runtime").progress
    ) as pbar:
        for s in range(seeds):
            order = np.random.default_rng(training.seed + s).permutation(train)
            for fraction, size in zip(fractions, sizes):
                rows = np.sort(order[:size])
                tagger.net_.heads, _ = tagger.fit_head_set(
                    feats, targets, rows, val, training.seed + s, progress=False
                )
                proba = tagger.predict_proba_features(feats[val])
                report = report_from_arrays(tasks, {k: v[val] for k, v in targets.items()}, proba)
                for task, m in report["tasks"].items():
                    records.append(
                        {
                            "fraction": fraction, "n_train": size, "seed": s, "task": task,
                            "weighted_f1": m["weighted_f1"], "accuracy": m["accuracy"],
                        }
                    )  # fmt: skip
                mean = report["summary"]["mean_weighted_f1"]
                pbar.update(info=f"{size} rows, seed {s}: mean F1 {mean:.4f}")
                pbar.advance()
    settings = {
        "backbone": tagger.settings("features").backbone,
        "framing": tagger.net_.encoder.preprocessing.to_dict().get("framing"),
        "image_size": tagger.net_.encoder.preprocessing.image_size,
        "head": tagger.settings("heads").head,
        "epochs": training.epochs,
        "fractions": fractions,
        "seeds": seeds,
        "n_train_all": int(len(train)),
    }
    return LearningCurve(pd.DataFrame(records), int(len(val)), settings)
