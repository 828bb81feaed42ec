"""docs/openapi.yaml describes the API the server serves: a valid OpenAPI document, the same
endpoints, and every answer of a real proxy matches its schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from openapi_spec_validator import validate

from mtproxy.ops.api import ROUTES
from ops.helpers import ALICE, user_toml
from ops.test_api import start

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"


def load() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(DOC.read_text())
    return doc


def test_the_document_is_valid_openapi() -> None:
    validate(load())


def test_the_document_lists_exactly_the_served_endpoints() -> None:
    served = {(method, re.sub(r"\(\[\^/\]\+\)", "{name}", path)) for method, path in ROUTES}
    documented = {
        (method.upper(), path)
        for path, item in load()["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert served == documented


def check(doc: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """Validate ``body`` against the documented answer for (path, method, status)."""
    answer = doc["paths"][path][method.lower()]["responses"][str(status)]
    if "$ref" in answer:
        answer = doc["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    schema = answer["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": doc["components"]},
                        format_checker=jsonschema.FormatChecker())  # fmt: skip


@pytest.mark.timeout_s(60)
async def test_real_answers_match_the_document(tmp_path: Path) -> None:
    doc = load()
    proxy, api = await start(tmp_path, 2, user_toml("alice", ALICE, quota="1GB"))
    calls: list[tuple[str, str, str, Any]] = [
        ("GET", "/api/health", "/api/health", None),
        ("GET", "/api/stats", "/api/stats", None),
        ("GET", "/api/users", "/api/users", None),
        ("POST", "/api/users", "/api/users",
         {"name": "bob", "max_ips": 2, "expires": "2030-01-01", "quota": "5GB"}),
        ("GET", "/api/users/bob", "/api/users/{name}", None),
        ("PATCH", "/api/users/bob", "/api/users/{name}", {"max_ips": None}),
        ("POST", "/api/users/bob/disable", "/api/users/{name}/disable", None),
        ("POST", "/api/users/bob/enable", "/api/users/{name}/enable", None),
        ("POST", "/api/users/bob/rotate-secret", "/api/users/{name}/rotate-secret", None),
        ("POST", "/api/users/alice/reset-quota", "/api/users/{name}/reset-quota", None),
        ("DELETE", "/api/users/bob", "/api/users/{name}", None),
        ("GET", "/api/users/bob", "/api/users/{name}", None),
        ("POST", "/api/users", "/api/users", {"name": "alice"}),
        ("POST", "/api/reload", "/api/reload", None),
    ]  # fmt: skip
    seen: set[tuple[str, str]] = set()
    try:
        for method, path, documented, body in calls:
            status, answer = await api.call(method, path, body)
            check(doc, documented, method, status, answer)
            seen.add((method, documented))
        status, _, answer = await type(api)(api.port, "wrong-token-0123456789").raw(
            "GET", "/api/users")  # fmt: skip
        check(doc, "/api/users", "GET", status, answer)
    finally:
        await proxy.stop()
    assert len(seen) == len(ROUTES)  # every endpoint answered at least once
