"""Derive multi-label tag columns from free text (e.g. a product's display name)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

PATTERN_VOCABULARY: dict[str, tuple[str, ...]] = {
    "striped": ("striped", "stripes", "stripe"),
    "checked": ("check", "checked", "checks"),
    "printed": ("printed", "print", "graphic"),
    "solid": ("solid",),
    "floral": ("floral",),
    "polka": ("polka",),
    "leather": ("leather",),
    "denim": ("denim",),
}


def keyword_tags(
    texts: Iterable[str],
    vocabulary: Mapping[str, Sequence[str]] = PATTERN_VOCABULARY,
    delimiter: str = "|",
) -> list[str]:
    """One multi-label cell per text: the vocabulary labels whose words occur in it.

    A text with none of the words gets a blank (missing label, not "no tag"): the absence of
    a word in a product name says nothing about the product.
    """
    lookup = {w.lower(): label for label, words in vocabulary.items() for w in words}
    cells = []
    for text in texts:
        words = set(re.findall(r"[a-z]+", str(text).lower()))
        labels = sorted({lookup[w] for w in words if w in lookup})
        cells.append(delimiter.join(labels))
    return cells
