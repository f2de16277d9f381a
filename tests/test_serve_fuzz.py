"""API fuzzing from the OpenAPI schema (schemathesis) on a key-protected server: no 5xx, every
response matches the schema (status codes, content types, bodies, headers), schema-invalid
input is refused and no route answers without the key. Bounded examples per operation.

Upload routes are exempt from one check only, ``positive_data_acceptance``: the schema says
"binary", and random bytes are rightly refused as not an image (415/422). On the model-less
synthetic catalogue (fast tier) the one 5xx allowed is the deliberate "no model loaded" 503;
the slow variant fuzzes a real catalogue with a real model and allows no 5xx at all.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.catalog_util import built_catalog, synthetic_catalog_dir  # noqa: E402
from tests.conftest import requires_fashion  # noqa: E402

pytestmark = pytest.mark.reliability
EXAMPLES = 25
KEY = "fuzz-key"
HOSTS = ("localhost", "testserver")
UPLOADS = {"/tag", "/similar", "/recommend"}
OPERATIONS = [
    ("POST", "/session"),
    ("GET", "/items"),
    ("GET", "/items/{item_id}"),
    ("GET", "/thumbs/{item_id}"),
    ("GET", "/topics"),
    ("GET", "/map"),
    ("GET", "/match"),
    ("POST", "/tag"),
    ("POST", "/similar"),
    ("POST", "/recommend"),
]
NO_MODEL = "no model loaded"


@schemathesis.check
def no_server_error_but_no_model(ctx, response, case):
    """Like ``not_a_server_error``, except the deliberate 503 of a server without a model."""
    if response.status_code >= 500:
        assert response.status_code == 503 and NO_MODEL in response.text, (
            f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
        )


def _fuzz(schema, method: str, path: str, allow_no_model: bool) -> None:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    operation = schema[path][method]
    excluded = [positive_data_acceptance] if path in UPLOADS else []
    extra = []
    if allow_no_model:
        excluded.append(not_a_server_error)
        extra.append(no_server_error_but_no_model)

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        case.call_and_validate(
            headers={"X-API-Key": KEY}, excluded_checks=excluded, additional_checks=extra
        )

    fuzz()


@pytest.fixture(scope="module")
def synthetic_schema(tmp_path_factory):
    from multitag.serve.app import create_app

    root = tmp_path_factory.mktemp("fuzz")
    app = create_app(synthetic_catalog_dir(root), api_key=KEY, allowed_hosts=HOSTS)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_every_operation_is_fuzzed(synthetic_schema):
    ops = [op.ok() for op in synthetic_schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in ops} == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_fuzz_synthetic_catalogue(synthetic_schema, method, path):
    _fuzz(synthetic_schema, method, path, allow_no_model=True)


@pytest.mark.slow
@requires_fashion
@pytest.mark.parametrize(("method", "path"), [op for op in OPERATIONS if op[1] in UPLOADS])
def test_fuzz_uploads_with_a_real_model(
    tmp_path_factory, trained_tagger, fashion_frame, method, path
):
    from multitag.serve.app import create_app

    cat_dir, model_dir, _ = built_catalog(tmp_path_factory, trained_tagger, fashion_frame)
    app = create_app(cat_dir, model_dir, api_key=KEY, allowed_hosts=HOSTS)
    _fuzz(schemathesis.openapi.from_asgi("/openapi.json", app), method, path, False)
