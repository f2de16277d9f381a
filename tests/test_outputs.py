"""Probabilities -> tags (multitag.tagger.outputs): the rules tag, catalogue and service share."""

from __future__ import annotations

import numpy as np

from multitag.data.tasks import Task
from multitag.tagger import outputs

COLOUR = Task("colour", "multiclass", ["red", "green", "blue"])
STYLE = {"name": "style", "kind": "multilabel", "classes": ["a", "b", "c", "d", "e"]}


def test_multiclass_takes_the_most_probable_and_multilabel_every_class_over_threshold():
    proba = {
        "colour": np.array([[0.2, 0.7, 0.1], [0.5, 0.1, 0.4]]),
        # five labels on: the service once applied the threshold inside the top 3 only
        "style": np.array([[0.9, 0.8, 0.7, 0.6, 0.55], [0.1, 0.2, 0.3, 0.4, 0.49]]),
    }
    cols = outputs.tag_columns(proba, [COLOUR, STYLE], top=2)
    assert cols["colour"] == ["green", "red"]
    assert cols["style"] == ["a|b|c|d|e", ""]
    assert np.allclose(cols["colour_prob"], [0.7, 0.5])
    assert np.allclose(cols["style_prob"], [0.9, 0.49])
    assert cols["colour_top"][1] == [{"label": "red", "prob": 0.5}, {"label": "blue", "prob": 0.4}]
    assert list(cols) == ["colour", "colour_prob", "colour_top", "style", "style_prob", "style_top"]
    assert outputs.tag_strings(proba, [COLOUR, STYLE]) == [
        ["colour:green", "style:a", "style:b", "style:c", "style:d", "style:e"],
        ["colour:red"],
    ]
    assert outputs.tag_strings(proba, [STYLE], threshold=0.45) == [
        ["style:a", "style:b", "style:c", "style:d", "style:e"],
        ["style:e"],
    ]


def test_top_k_orders_by_probability_and_picks_k_of_many():
    rng = np.random.default_rng(0)
    proba = rng.random((4, 1000))
    classes = [f"c{i}" for i in range(1000)]
    top = outputs.top_k(proba, classes, 5)
    for row, picks in zip(proba, top):
        expected = np.argsort(-row)[:5]
        assert [p["label"] for p in picks] == [classes[j] for j in expected]
        assert [p["prob"] for p in picks] == sorted((p["prob"] for p in picks), reverse=True)
    assert outputs.top_k(np.array([0.123456789, 0.9]), ["x", "y"], 1, decimals=4) == [
        [{"label": "y", "prob": 0.9}]
    ]


def test_split_tasks_cuts_the_catalogue_layout_and_empty_batches_give_empty_columns():
    tagprobs = np.arange(16, dtype=float).reshape(2, 8)
    parts = outputs.split_tasks(tagprobs, [COLOUR, STYLE])
    assert parts["colour"].tolist() == [[0, 1, 2], [8, 9, 10]]
    assert parts["style"].shape == (2, 5)
    empty = {"colour": np.zeros((0, 3)), "style": np.zeros((0, 5))}
    cols = outputs.tag_columns(empty, [COLOUR, STYLE])
    assert all(len(v) == 0 for v in cols.values())
    assert outputs.tag_strings(empty, [COLOUR, STYLE]) == []
