"""Which labelled photos a saved model has not trained on.

Every tagger saved since ``split.csv`` existed records its training and validation rows: their
ids and the content digest of each photo. A prior shift fitted on an ensemble (``multitag
combine --prior-shift-data``) or a score (``multitag evaluate --held-out``) is only honest on
photos no member trained on; :func:`held_out_rows` keeps those rows of a manifest and says how
many it left out. Photos are matched by content, so a byte-identical copy of a training photo
under another id counts as seen, and another catalogue's ids cannot collide with the
training ids; models saved before digests were recorded are matched by id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from multitag.core.digest import photo_digests  # its home; still importable from here


def training_keys(model) -> tuple[str, set[str]] | None:
    """``("digest" | "id", keys)`` of the photos ``model`` (a tagger or a
    :class:`TaggerEnsemble`: any member) trained on; ``None`` when a tagger does not record
    its split (saved before ``split.csv``)."""
    splits = [getattr(m, "split_", None) for m in getattr(model, "members", [model])]
    if not all(splits):
        return None
    kind = "digest" if all(s.get("train_digests") for s in splits) else "id"
    keys = {str(k) for s in splits for k in s[f"train_{kind}s"]}
    keys.discard("")
    return kind, keys


def _seen_mask(model, frame: pd.DataFrame, source: str) -> np.ndarray | None:
    known = training_keys(model)
    if known is None:
        return None
    kind, keys = known
    column = "path" if kind == "digest" else "id"
    if column not in frame.columns:
        raise ValueError(f"{source} has no {column} column: cannot tell which photos were seen")
    values = photo_digests(frame["path"]) if kind == "digest" else frame["id"].astype(str)
    return np.asarray(pd.Series(values).isin(keys), bool)


@dataclass
class HeldOut:
    """The rows of a manifest that no member trained on, and what was left out."""

    frame: pd.DataFrame
    n_seen: int  #: rows left out: a member trained on their photo
    known: bool  #: False when some member does not record its split (nothing was left out)

    def summary(self, what: str) -> str:
        if not self.known:
            return (
                f"{what}: {len(self.frame)} row(s); a model does not record its training "
                "split (saved by an older multitag), so photos it trained on cannot be left out"
            )
        return (
            f"{what}: {len(self.frame)} row(s) no model trained on "
            f"({self.n_seen} row(s) with a photo it trained on left out)"
        )


def seen_rows(model, frame: pd.DataFrame) -> pd.Index:
    """Index labels of the rows of ``frame`` whose photo a member of ``model`` trained on
    (empty when the model does not record its split or ``frame`` lacks the column needed)."""
    try:
        seen = _seen_mask(model, frame, "the frame")
    except ValueError:
        seen = None
    return frame.index[:0] if seen is None else frame.index[seen]


def held_out_rows(model, frame: pd.DataFrame, source: str = "the manifest") -> HeldOut:
    """The rows of ``frame`` whose photo no member of ``model`` trained on. Raises
    ``ValueError`` naming ``source`` when every row was trained on."""
    seen = _seen_mask(model, frame, source)
    if seen is None:
        return HeldOut(frame, 0, known=False)
    if seen.all():
        raise ValueError(
            f"every row of {source} ({len(frame)}) has a photo a model trained on; pass "
            "photos no member trained on, e.g. the manifest the members were trained from "
            "(its validation rows are kept, unless it was trained with --refit) or a separate "
            "held-out set"
        )
    return HeldOut(frame[~seen].reset_index(drop=True), int(seen.sum()), known=True)
