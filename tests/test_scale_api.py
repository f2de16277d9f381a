"""Large catalogues in the API: columnar filters equal a row-by-row scan, map views sample
the box with a density grid, and a 1 M-item synthetic catalogue answers /items and /map."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from multitag.catalog.columns import ItemColumns
from multitag.catalog.store import load_catalog
from multitag.catalog.synthetic import synthetic_catalog

LOCAL = "http://localhost"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synthetic_catalog(tmp_path_factory.mktemp("syn") / "catalog", 5000)


def test_columnar_filters_equal_a_python_scan(small):
    cat = load_catalog(small)
    cols = ItemColumns.from_parquet(cat.items, cat.data_dir / "items.parquet")
    row_tags = [set(map(str, t)) for t in cat.items["tags"]]
    for tags, topic, cluster in [
        (["gender:gender1"], None, None),
        (["articleType:articletype3", "gender:gender2"], None, None),
        ([], 4, None),
        (["baseColour:basecolour0"], 3, 3),
        (["nope:nothing"], None, None),
    ]:
        want = np.array(
            [
                all(t in s for t in tags)
                and (topic is None or cat.items["topic"].iloc[i] == topic)
                and (cluster is None or cat.items["cluster"].iloc[i] == cluster)
                for i, s in enumerate(row_tags)
            ]
        )
        np.testing.assert_array_equal(cols.mask(tags, topic, cluster), want)
    assert cols.tags_of(7) == [str(t) for t in cat.items["tags"].iloc[7]]
    assert sorted(cols.tag_names) == sorted(set().union(*row_tags))


def test_map_view_samples_the_box_with_a_density_grid(small):
    cat = load_catalog(small)
    cols = ItemColumns.from_parquet(cat.items, cat.data_dir / "items.parquet")
    whole = cols.view(None, limit=10_000)
    assert whole["total"] == 5000 and len(whole["rows"]) == 5000 and whole["density"] is None
    box = (-0.5, 0.5, -0.5, 0.5)
    view = cols.view(box, limit=300, bins=16)
    x, y = cols.x, cols.y
    inside = (x >= -0.5) & (x <= 0.5) & (y >= -0.5) & (y <= 0.5)
    assert view["total"] == inside.sum() > 300 and len(view["rows"]) == 300
    assert inside[view["rows"]].all()
    counts = view["density"]["counts"]
    assert counts.shape == (16, 16) and counts.sum() == inside.sum()
    # zooming in keeps the points that were shown there, and adds more
    zoom = cols.view((0.0, 0.5, 0.0, 0.5), limit=300)
    shown = set(view["rows"]) & set(np.flatnonzero(inside & (x >= 0) & (y >= 0)))
    assert shown <= set(zoom["rows"])


def test_map_views_on_a_second_map(small):
    """Several maps (--maps): a view box is asked for on one of them; every map shows the
    same sampled points, so the explorer can switch maps without another sample."""
    cat = load_catalog(small)
    items = cat.items.assign(x_topics=-cat.items["y"], y_topics=cat.items["x"])
    cols = ItemColumns(items, pa.array(items["tags"].tolist()), maps=("embedding", "topics"))
    assert list(cols.maps) == ["embedding", "topics"]
    box = (-0.5, 0.0, -0.5, 0.5)
    view = cols.view(box, limit=200, layout="topics")
    tx, ty = cols.xy("topics")
    inside = (tx >= -0.5) & (tx <= 0.0) & (ty >= -0.5) & (ty <= 0.5)
    assert view["total"] == inside.sum() > 200 and inside[view["rows"]].all()
    assert view["density"]["counts"].sum() == inside.sum()
    # the same box on the first map is another set of points
    assert cols.view(box, limit=10_000)["total"] != view["total"]
    with pytest.raises(KeyError, match="no map 'tsne'"):
        cols.view(None, layout="tsne")


def test_map_and_items_endpoints(small):
    from multitag.serve.app import create_app

    with TestClient(create_app(small), base_url=LOCAL) as client:
        full = client.get("/map").json()
        assert full["n_items"] == full["total"] == len(full["ids"]) == 5000
        assert full["rows"] == list(range(5000)) and not full["sampled"]
        view = client.get(
            "/map", params={"x0": -1, "x1": 0, "y0": -1, "y1": 1, "limit": 100, "bins": 8}
        ).json()
        assert view["sampled"] and len(view["ids"]) == len(view["x"]) == 100
        assert all(x <= 0 for x in view["x"])
        assert len(view["colour_by"]["topic"]["codes"]) == 100
        assert sum(map(sum, view["density"]["counts"])) == view["total"]
        tagged = client.get("/map", params={"tag": "gender:gender0"}).json()
        match = client.get("/match", params={"tag": "gender:gender0"}).json()
        assert sorted(tagged["rows"]) == match["rows"] and tagged["total"] == match["total"]
        right = client.get("/map", params={"x0": 0.2}).json()  # one edge: a half-plane
        assert right["total"] > 0 and min(right["x"]) >= 0.2
        empty = client.get("/map", params={"x0": 1, "x1": 0, "y0": 0, "y1": 1}).json()
        assert empty["total"] == 0 and empty["ids"] == [] and empty["density"] is None
        page = client.get("/items", params={"tag": "gender:gender0", "topic": 2}).json()
        assert page["total"] > 0
        assert all(i["topic"] == 2 and i["labels"]["gender"] == "gender0" for i in page["items"])


@pytest.mark.slow
def test_a_million_item_catalogue_answers_items_and_map(tmp_path):
    from multitag.serve.app import create_app

    n = 1_000_000
    app = create_app(synthetic_catalog(tmp_path / "catalog", n, dim=8))
    with TestClient(app, base_url=LOCAL) as client:
        page = client.get("/items", params={"page": 2000, "page_size": 50}).json()
        assert page["total"] == n and page["items"][0]["id"] == f"s{1999 * 50}"
        two = client.get("/items", params={"tag": "articleType:articletype3,gender:gender1"})
        assert 0 < two.json()["total"] < n // 30
        by_topic = client.get("/items", params={"topic": 5, "cluster": 5}).json()
        assert by_topic["total"] > 0
        assert all(i["topic"] == 5 and i["cluster"] == 5 for i in by_topic["items"])
        whole = client.get("/map").json()
        assert whole["sampled"] and whole["total"] == n and len(whole["ids"]) == 50_000
        assert sum(map(sum, whole["density"]["counts"])) == n
        zoom = client.get("/map", params={"x0": 0, "x1": 0.1, "y0": 0, "y1": 0.1}).json()
        assert all(0 <= x <= 0.1 for x in zoom["x"]) and zoom["total"] < n
