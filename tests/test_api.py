"""The catalogue API on a catalogue of generated photos (real Lite0 weights, no real data set
needed, so it runs in the fast tier): every endpoint, bad uploads, path traversal attempts,
the API key. tests/test_catalog.py covers a catalogue of real photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.catalog_util import built_synthetic_catalog

LOCAL = "http://localhost"  # the Host allow-list accepts localhost, not TestClient's default


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, synthetic_tagger, synthetic_rows):
    return built_synthetic_catalog(tmp_path_factory, synthetic_tagger, synthetic_rows)


@pytest.fixture(scope="module")
def client(catalog):
    from fastapi.testclient import TestClient

    from multitag.serve.app import create_app

    cat_dir, model_dir, _ = catalog
    with TestClient(create_app(cat_dir, model_dir), base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def rows(synthetic_rows):
    return synthetic_rows


def _upload(path, name=None, ctype="image/jpeg"):
    return {"file": (name or path.name, path.read_bytes(), ctype)}


def test_items_paging_and_filters(client, rows):
    n = len(rows)
    page = client.get("/items", params={"page": 1, "page_size": 50}).json()
    assert page["total"] == n and len(page["items"]) == 50
    last = client.get("/items", params={"page": 4, "page_size": 50}).json()
    assert len(last["items"]) == n - 150
    ids = [
        i["id"]
        for p in (1, 2, 3, 4)
        for i in client.get("/items", params={"page": p, "page_size": 50}).json()["items"]
    ]
    assert ids == rows["id"].tolist()
    item = page["items"][0]
    tag = f"articleType:{item['labels']['articleType']}"
    tagged = client.get("/items", params={"tag": tag, "page_size": 1000}).json()
    assert 0 < tagged["total"] < n
    assert all(i["labels"]["articleType"] == item["labels"]["articleType"] for i in tagged["items"])
    both = client.get("/items", params={"tag": f"{tag},gender:{item['labels']['gender']}"}).json()
    assert both["total"] <= tagged["total"]
    for field in ("topic", "cluster"):
        got = client.get("/items", params={field: item[field], "page_size": 1000}).json()
        assert got["total"] >= 1 and all(i[field] == item[field] for i in got["items"])
    assert client.get("/items", params={"page": 0}).status_code == 422


def test_item_detail_and_topics(client, rows):
    item_id = rows["id"].iloc[3]
    d = client.get(f"/items/{item_id}").json()
    assert d["id"] == item_id and d["thumb"] == f"/thumbs/{item_id}"
    top = d["tags"]["articleType"]
    assert len(top) == 3 and top[0]["prob"] >= top[1]["prob"] >= top[2]["prob"]
    assert top[0]["label"] == d["labels"]["articleType"] and len(d["imagenet"]) == 5
    assert client.get("/items/nope").status_code == 404
    assert client.get("/items/a%2Fb").status_code == 404
    topics = client.get("/topics").json()
    assert len(topics) == 6 and sum(t["size"] for t in topics) == len(rows)
    assert d["topic_name"] == topics[d["topic"]]["name"]


def test_tag_upload_matches_catalogue(client, rows):
    row = rows.iloc[5]
    from pathlib import Path

    res = client.post("/tag", files=_upload(Path(row["path"])))
    assert res.status_code == 200, res.text
    body = res.json()
    item = client.get(f"/items/{row['id']}").json()
    assert body["top"] == item["labels"]
    assert (
        abs(body["tags"]["articleType"][0]["prob"] - item["tags"]["articleType"][0]["prob"]) < 1e-3
    )
    assert len(body["imagenet"]) == 5


def test_bad_uploads(client, catalog, tmp_path, rows):
    from fastapi.testclient import TestClient

    from multitag.serve.app import create_app

    res = client.post("/tag", files={"file": ("notes.txt", b"hello, not an image", "text/plain")})
    assert res.status_code == 415 and "not an image" in res.json()["detail"]
    assert client.post("/tag", files={"file": ("e.jpg", b"", "image/jpeg")}).status_code == 415
    data = Path(rows["path"].iloc[0]).read_bytes()
    res = client.post("/tag", files={"file": ("cut.jpg", data[:200], "image/jpeg")})
    assert res.status_code == 422 and "cut.jpg" in res.json()["detail"]
    assert client.post("/tag").status_code == 422  # no file at all
    cat_dir, model_dir, _ = catalog
    big = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(big, format="PNG")
    with TestClient(create_app(cat_dir, model_dir, max_upload_mb=0.05), base_url=LOCAL) as small:
        res = small.post("/tag", files={"file": ("big.png", big.getvalue(), "image/png")})
        assert res.status_code == 413 and "limit" in res.json()["detail"]
    with TestClient(
        create_app(cat_dir), base_url=LOCAL
    ) as no_model:  # no model: uploads disabled, clearly
        res = no_model.post("/tag", files={"file": ("a.jpg", data, "image/jpeg")})
        assert res.status_code == 503 and "--model" in res.json()["detail"]


def test_similar_by_id_upload_and_filter(client, rows):
    from pathlib import Path

    item_id = rows["id"].iloc[0]
    res = client.post("/similar", data={"id": item_id, "k": 8}).json()
    assert res["query"] == item_id and len(res["items"]) == 8
    scores = [i["score"] for i in res["items"]]
    assert scores == sorted(scores, reverse=True) and item_id not in [i["id"] for i in res["items"]]
    same_type = rows.set_index("id").loc[[i["id"] for i in res["items"]], "articleType"]
    assert (same_type == rows["articleType"].iloc[0]).mean() >= 0.5
    up = client.post("/similar", files=_upload(Path(rows["path"].iloc[7])), data={"k": 3}).json()
    assert up["items"][0]["id"] == rows["id"].iloc[7] and up["items"][0]["score"] > 0.99
    assert up["query_tags"]["top"] and len(up["query_xy"]) == 2
    tag = "gender:Women"
    filt = client.post("/similar", data={"id": item_id, "k": 5, "tag": tag}).json()
    labels = [client.get(f"/items/{i['id']}").json()["labels"]["gender"] for i in filt["items"]]
    assert labels and set(labels) == {"Women"}
    assert client.post("/similar", data={"k": 3}).status_code == 422
    assert client.post("/similar", data={"id": "missing"}).status_code == 404


def test_recommend_with_reasons(client, rows):
    from pathlib import Path

    kind = rows["articleType"].iloc[0]
    shopper = rows[rows["articleType"] == kind].iloc[:3]
    files = [
        ("files", (f"{i}.jpg", Path(p).read_bytes(), "image/jpeg"))
        for i, p in zip(shopper["id"], shopper["path"])
    ]
    res = client.post("/recommend", files=files, data={"k": 6})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["n_photos"] == 3 and len(body["items"]) == 6
    got = [i["id"] for i in body["items"]]
    assert not set(got) & set(shopper["id"])  # the shopper's own photos are not recommended
    assert all(i["reason"]["shared_attributes"] for i in body["items"])
    assert any(i["reason"]["shared_topics"] for i in body["items"])
    assert f"articleType:{body['items'][0]['labels']['articleType']}" in body["profile_attributes"]


def test_thumbnails_and_traversal(client, catalog, rows):
    item_id = rows["id"].iloc[2]
    res = client.get(f"/thumbs/{item_id}")
    assert res.status_code == 200 and res.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(res.content))
    assert max(img.size) <= 160 and img.size[0] > 10
    cat_dir = catalog[0]
    assert any((cat_dir / "thumbs").iterdir())
    attempts = [
        "/thumbs/..%2F..%2Fetc%2Fpasswd",
        "/thumbs/../../etc/passwd",
        "/thumbs/%2Fetc%2Fpasswd",
        "/thumbs//etc/passwd",
        "/thumbs/..%252F..%252Fetc%252Fpasswd",
        f"/thumbs/{item_id}%2F..%2F..%2Fcatalog.json",
        "/static/..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/../app.py",
        "/static/%2E%2E/app.py",
        "/static/vendor/..%2F..%2Fapp.py",
        f"/thumbs/{cat_dir}/catalog.json",
    ]
    for url in attempts:
        res = client.get(url)
        assert res.status_code in (404, 400), (url, res.status_code)
        assert b"root:" not in res.content and b"create_app" not in res.content


def test_page_static_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/vendor/plotly.min.js" in page.text
    js = client.get("/static/vendor/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000
    assert "scattergl" in client.get("/static/app.js").text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in (
        "/tag",
        "/similar",
        "/items",
        "/items/{item_id}",
        "/topics",
        "/recommend",
        "/thumbs/{item_id}",
        "/map",
    ):
        assert p in paths
    m = client.get("/map").json()
    assert len(m["ids"]) == len(m["x"]) == len(m["colour_by"]["topic"]["codes"])
    assert {"topic", "cluster", "articleType"} <= set(m["colour_by"])
    tag = m["tags"][0]
    match = client.get("/match", params={"tag": tag}).json()
    listed = client.get("/items", params={"tag": tag, "page_size": 1000}).json()
    assert [m["ids"][r] for r in match["rows"]] == [i["id"] for i in listed["items"]]
    assert match["total"] == listed["total"] > 0
    unknown = client.get("/map", params={"layout": "nope"})
    assert unknown.status_code == 404 and "no map 'nope'" in unknown.json()["detail"]


def test_api_key(catalog):
    from fastapi.testclient import TestClient

    from multitag.serve.app import create_app

    with TestClient(create_app(catalog[0], api_key="s3cret"), base_url=LOCAL) as c:
        assert c.get("/topics").status_code == 401
        assert c.get("/topics", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/topics", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/similar", data={"id": "x"}).status_code == 401
        assert c.get("/").status_code == 200  # the page itself asks for the key


def test_serve_cli_errors_clearly(tmp_path):
    from typer.testing import CliRunner

    from multitag.cli.main import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "no finished catalogue" in result.output and "catalog build" in result.output
