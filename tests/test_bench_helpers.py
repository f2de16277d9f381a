"""Helpers every benchmark shares: the commit a result came from, the forward-only rate."""

from __future__ import annotations

import re

from multitag.bench.core import forward_only
from multitag.bench.provenance import git_commit


def test_git_commit_names_the_checkout_or_says_unknown(tmp_path, monkeypatch):
    assert re.fullmatch(r"[0-9a-f]{7,}", git_commit())
    monkeypatch.chdir(tmp_path)  # not a git checkout
    assert git_commit() == "unknown"


def test_forward_only_counts_whole_batches_on_the_taggers_engine(synthetic_tagger):
    rate = forward_only(synthetic_tagger, n=8, batch_size=4)
    assert rate > 0
    assert forward_only(synthetic_tagger, n=8, batch_size=4, engine="torch") > 0
