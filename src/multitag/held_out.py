"""Which labelled photos a saved model has not trained on.

Every tagger saved since ``split.csv`` existed records the ids of its training and
validation rows. A prior shift fitted on an ensemble (``multitag combine --prior-shift-data``)
or a score (``multitag evaluate --held-out``) is only honest on photos no member trained on;
:func:`held_out_rows` keeps those rows of a manifest and says how many it left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


def training_ids(model) -> set[str] | None:
    """Ids of the photos ``model`` (a tagger or a :class:`TaggerEnsemble`: any member) trained
    on; ``None`` when a tagger does not record its split (saved before ``split.csv``)."""
    members = getattr(model, "members", [model])
    seen: set[str] = set()
    for member in members:
        split = getattr(member, "split_", None)
        if not split:
            return None
        seen.update(str(i) for i in split["train_ids"])
    return seen


@dataclass
class HeldOut:
    """The rows of a manifest that no member trained on, and what was left out."""

    frame: pd.DataFrame
    n_seen: int  #: rows left out: a member trained on them
    known: bool  #: False when some member does not record its split (nothing was left out)

    def summary(self, what: str) -> str:
        if not self.known:
            return (
                f"{what}: {len(self.frame)} row(s); a model does not record its training "
                "split (saved by an older multitag), so rows it trained on cannot be left out"
            )
        return (
            f"{what}: {len(self.frame)} row(s) no model trained on "
            f"({self.n_seen} row(s) it trained on left out)"
        )


def seen_rows(model, frame: pd.DataFrame) -> pd.Index:
    """Index labels of the rows of ``frame`` whose photo a member of ``model`` trained on
    (empty when the model does not record its split or ``frame`` has no ``id``)."""
    seen = training_ids(model)
    if seen is None or "id" not in frame.columns:
        return frame.index[:0]
    return frame.index[frame["id"].astype(str).isin(seen)]


def held_out_rows(model, frame: pd.DataFrame, source: str = "the manifest") -> HeldOut:
    """The rows of ``frame`` (with an ``id`` column) whose photo no member of ``model``
    trained on. Raises ``ValueError`` naming ``source`` when every row was trained on."""
    seen = training_ids(model)
    if seen is None:
        return HeldOut(frame, 0, known=False)
    if "id" not in frame.columns:
        raise ValueError(f"{source} has no id column: cannot tell which photos were trained on")
    keep = ~frame["id"].astype(str).isin(seen)
    if not keep.any():
        raise ValueError(
            f"every row of {source} ({len(frame)}) was in a model's training split; pass "
            "photos no member trained on, e.g. the manifest the members were trained from "
            "(its validation rows are kept) or a separate held-out set"
        )
    return HeldOut(frame[keep].reset_index(drop=True), int((~keep).sum()), known=True)
