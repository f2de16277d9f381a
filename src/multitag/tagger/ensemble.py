"""Several fitted taggers, their probabilities averaged: e.g. Lite0 and Lite2, or a frozen and
a fine-tuned model (research/LOG.md, "Averaging backbones").

Not to be confused with head sets (``HeadConfig(head_sets=n)``), which average ``n`` sets of
heads on one backbone's features (one encoder pass). A :class:`TaggerEnsemble` runs every
member's own encoder and preprocessing (input size, framing) on each photo, so it costs the
sum of its members' inference and is worth it where accuracy matters more than throughput.

Saved as a directory with ``config.json`` (``kind: multitag-ensemble``) and one model
directory per member (``member-0``, ...);
:func:`multitag.tagger.loading.load_any_tagger` loads either kind, so ``multitag tag``
and ``evaluate`` take an ensemble like any model (a catalogue, the explorer and ONNX export
need one tagger: use a member).
"""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from multitag.core import integrity
from multitag.core.io import write_json
from multitag.core.locks import writer_lock
from multitag.data.tasks import Task
from multitag.tagger.estimator import MultiTaskTagger
from multitag.tagger.persistence import (
    CONFIG,
    ENSEMBLE_KIND,
    FORMAT_VERSION,
    library_versions,
    read_config,
)


def _same_tasks(reference: Sequence[Task], other: Sequence[Task], member: int) -> None:
    names = [t.name for t in reference]
    if [t.name for t in other] != names:
        raise ValueError(
            f"member {member} tags {[t.name for t in other]}, member 0 tags {names}: "
            "ensemble members must tag the same tasks (train them on the same columns)"
        )
    for a, b in zip(reference, other):
        if a.kind != b.kind or list(a.classes) != list(b.classes):
            raise ValueError(
                f"member {member}, task {a.name!r}: its classes or kind differ from member 0's "
                f"({b.kind}, {len(b.classes)} classes vs {a.kind}, {len(a.classes)}); train "
                "the members on the same data so they share every task's classes"
            )


class TaggerEnsemble:
    """Average the per-task probabilities of fitted taggers (:class:`MultiTaskTagger`) that
    tag the same tasks with the same classes; ``weights`` (default equal) weight the
    average. The ImageNet tags are those of the first member that has a classifier."""

    def __init__(self, members: Sequence, weights: Sequence[float] | None = None) -> None:
        members = list(members)
        if not members:
            raise ValueError("TaggerEnsemble needs at least one fitted tagger")
        for i, m in enumerate(members):
            if not hasattr(m, "net_"):
                raise ValueError(f"member {i} is not fitted: call fit() or load() first")
            _same_tasks(members[0].tasks_, m.tasks_, i)
        if weights is None:
            weights = [1.0] * len(members)
        weights = [float(w) for w in weights]
        if len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"weights: one non-negative number per member ({len(members)}), not all zero; "
                f"got {weights}"
            )
        self.members = members
        self.weights = [w / sum(weights) for w in weights]
        self.prior_shift_: dict[str, dict] = {}  # task -> tau, cross_fitted_gain, bias
        # True: free each member's inference engine after its pass over the photos, so peak
        # memory is the largest member's, not their sum, and every call rebuilds the engines
        # (a second or two each). For one-shot batch jobs: the CLI's tag / evaluate / combine
        # set it; a service keeps the default and stays warm.
        self.release_engines = False

    @property
    def tasks_(self) -> list[Task]:
        return self.members[0].tasks_

    @property
    def photo_profile_(self) -> dict | None:
        """The first member's training-photo profile (members train on the same photos)."""
        return getattr(self.members[0], "photo_profile_", None)

    def settings(self, group: str):
        """The first member's ``group`` settings (see ``MultiTaskTagger.settings``)."""
        return self.members[0].settings(group)

    def set_params(self, **params) -> TaggerEnsemble:
        """Set the same parameters on every member (e.g. ``runtime__progress=False``)."""
        for m in self.members:
            m.set_params(**params)
        return self

    def warm_up(self) -> TaggerEnsemble:
        """Prepare every member's inference engine now (see ``MultiTaskTagger.warm_up``)."""
        for m in self.members:
            m.warm_up()
        return self

    def predict_proba(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        batch_size: int = 64,
        return_features: bool = False,
        use_cache: bool = False,
    ) -> dict:
        """As ``MultiTaskTagger.predict_proba``: ``{"proba", "imagenet", "errors"}``. A photo
        unreadable for any member is zero and listed in ``errors``. ``return_features`` is not
        supported: members have different feature spaces (use one member for embeddings)."""
        if return_features:
            raise ValueError(
                "a TaggerEnsemble has no single feature space: embed or build a catalogue "
                "with one of its members (TaggerEnsemble.members[i] / its member-i directory)"
            )
        out = self._average(paths, batch_size, use_cache)
        for name, shift in self.prior_shift_.items():
            if shift["tau"]:
                shifted = out["proba"][name] * np.exp(np.asarray(shift["bias"], np.float32))
                out["proba"][name] = shifted / shifted.sum(1, keepdims=True).clip(1e-30)
        return out

    def _average(self, paths, batch_size: int = 64, use_cache: bool = False) -> dict:
        """The members' weighted mean, before any prior shift; unreadable rows zero."""
        proba = {t.name: np.zeros((len(paths), t.n_classes), np.float32) for t in self.tasks_}
        imagenet, errors = None, {}
        for member, weight in zip(self.members, self.weights):
            out = member.predict_proba(paths, batch_size=batch_size, use_cache=use_cache)
            if self.release_engines:
                member.release_engine()
                gc.collect()
            errors.update(out["errors"])
            for name, p in out["proba"].items():
                proba[name] += weight * p
            if imagenet is None:
                imagenet = out["imagenet"]
        rows = sorted(errors)
        for arr in [*proba.values(), imagenet]:
            if arr is not None and rows:
                arr[rows] = 0
        return {"proba": proba, "imagenet": imagenet, "errors": errors}

    def fit_prior_shift(self, frame: pd.DataFrame) -> TaggerEnsemble:
        """Choose each multi-class task's prior shift for the averaged probabilities.

        ``frame`` (``id``, ``path`` + the task columns, e.g. from ``load_manifest``) holds
        labelled photos; rows a member trained on (its ``split.csv``) are left out, so the
        manifest the members were trained from leaves their validation rows
        (``prior_shift_rows_`` says how many). As ``HeadConfig(prior_shift="auto")``:
        ``tau`` is kept only where a 2-fold cross-fitted weighted-F1 gain on these rows is
        positive; the prior is their class mix.
        """
        from multitag.data.tasks import encode_all
        from multitag.multitask.prior_shift import choose_shifts
        from multitag.tagger.held_out import held_out_rows

        missing = [c for c in ["path", *(t.name for t in self.tasks_)] if c not in frame.columns]
        if missing:
            raise ValueError(f"the frame for the prior shift lacks column(s) {missing}")
        rows = held_out_rows(self, frame, "the prior-shift data")
        frame = rows.frame
        out = self._average(frame["path"].tolist())  # the plain average; no state changed yet
        usable = np.ones(len(frame), bool)
        usable[list(out["errors"])] = False
        targets = encode_all(frame.reset_index(drop=True), self.tasks_)
        labels = {k: v[usable] for k, v in targets.items()}
        proba = {k: v[usable] for k, v in out["proba"].items()}
        shifts = choose_shifts(self.tasks_, proba, labels, labels)
        for s in shifts.values():  # JSON-ready: saved in config.json
            s["bias"] = [] if s["bias"] is None else s["bias"].tolist()
        self.prior_shift_ = shifts
        self.prior_shift_rows_ = rows
        return self

    def predict(self, paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
        """Top-1 label per task (multi-label: labels with probability >= 0.5, ``|``-joined)."""
        from multitag.tagger.batch import top1_frame

        return top1_frame(self, paths)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and every member's model directory (``member-0``, ...); member
        directories left by an earlier ensemble saved there with more members are removed."""
        directory = Path(directory)
        if (directory / CONFIG).is_file() and read_config(directory).get("kind") != ENSEMBLE_KIND:
            raise ValueError(
                f"{directory} holds a saved tagger (perhaps a member): save the ensemble to a "
                "new folder"
            )
        directory.mkdir(parents=True, exist_ok=True)
        with writer_lock(directory, "ensemble", folder=True):
            self._write(directory)
        return directory

    def _write(self, directory: Path) -> None:
        names = []
        for i, m in enumerate(self.members):
            target = directory / f"member-{i}"
            if target.exists():
                shutil.rmtree(target)
            m.save(target)
            names.append(target.name)
        for stale in directory.glob("member-*"):  # from an earlier ensemble with more members
            if stale.is_dir() and stale.name[7:].isdigit() and stale.name not in names:
                shutil.rmtree(stale)
        config = {
            "format_version": FORMAT_VERSION,
            "kind": ENSEMBLE_KIND,
            "members": names,
            "weights": self.weights,
            "prior_shift": self.prior_shift_,
            "tasks": [t.to_dict() for t in self.tasks_],
            "versions": library_versions(),
        }
        write_json(directory / CONFIG, integrity.seal(config, directory, []))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TaggerEnsemble:
        """Rebuild a saved ensemble (every member reloads exactly)."""
        directory = Path(directory)
        config = read_config(directory)
        if config.get("kind") != ENSEMBLE_KIND:
            raise ValueError(f"{directory} holds a {config.get('kind')!r}, not an ensemble")
        ensemble = cls(
            [MultiTaskTagger.load(directory / n) for n in config["members"]], config["weights"]
        )
        ensemble.prior_shift_ = config.get("prior_shift", {})
        return ensemble

    @classmethod
    def from_dirs(
        cls, directories: Sequence[str | os.PathLike], weights: Sequence[float] | None = None
    ) -> TaggerEnsemble:
        """An ensemble of saved taggers (``multitag train ... --out DIR`` each)."""
        return cls([MultiTaskTagger.load(d) for d in directories], weights)

    def __repr__(self) -> str:
        names = ", ".join(
            m.settings("features").backbone
            + (" framed" if m.net_.encoder.preprocessing.framing else "")
            for m in self.members
        )
        return f"TaggerEnsemble([{names}], weights={[round(w, 3) for w in self.weights]})"
