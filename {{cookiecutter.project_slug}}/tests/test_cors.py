"""CORS (security.py): closed unless CORS_ORIGINS names a site, and then only for it."""

import pytest

from {{ cookiecutter.package_name }} import ConfigError
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER

SITE = "https://app.example.com"
PREFLIGHT = {
    "Origin": SITE,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": f"{API_KEY_HEADER.lower()}, content-type",
}


def cors_headers(response):
    return {
        name.lower(): value
        for name, value in response.headers
        if name.lower().startswith("access-control-")
    }


def test_closed_by_default_no_cors_header_at_all(client, key):
    answers = [
        client.get("/v1/whoami", headers={"Origin": SITE, API_KEY_HEADER: key}),
        client.options("/v1/items", headers=PREFLIGHT),
        client.get("/nowhere", headers={"Origin": SITE}),
    ]
    assert [cors_headers(answer) for answer in answers] == [{}, {}, {}]


def test_an_allowed_origin_may_call_with_the_key_header_never_with_credentials(make_app, key):
    client = make_app(CORS_ORIGINS=f"{SITE}, http://localhost:3000").test_client()
    preflight = client.options("/v1/items", headers=PREFLIGHT)
    allowed = cors_headers(preflight)
    assert allowed["access-control-allow-origin"] == SITE
    assert API_KEY_HEADER.lower() in allowed["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed
    answer = client.get("/v1/whoami", headers={"Origin": SITE, API_KEY_HEADER: key})
    exposed = cors_headers(answer)
    assert exposed["access-control-allow-origin"] == SITE
    assert "access-control-allow-credentials" not in exposed
    assert "x-request-id" in exposed["access-control-expose-headers"].lower()
{%- if cookiecutter.use_rate_limiting %}
    assert "x-ratelimit-remaining" in exposed["access-control-expose-headers"].lower()
{%- endif %}
    local = client.get(
        "/v1/whoami", headers={"Origin": "http://localhost:3000", API_KEY_HEADER: key}
    )
    assert cors_headers(local)["access-control-allow-origin"] == "http://localhost:3000"


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "http://app.example.com",
        "null",
    ],
)
def test_cross_origin_abuse_other_origins_get_no_cors_header(make_app, key, origin):
    client = make_app(CORS_ORIGINS=SITE).test_client()
    answer = client.get("/v1/whoami", headers={"Origin": origin, API_KEY_HEADER: key})
    preflight = client.options("/v1/items", headers={**PREFLIGHT, "Origin": origin})
    assert cors_headers(answer) == cors_headers(preflight) == {}


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "https://*.example.com",
        "https://app.example.com/",
        "app.example.com",
        "https://a.example/path",
        "ftp://x",
    ],
)
def test_a_wildcard_or_a_url_is_not_an_origin(make_app, value):
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        make_app(CORS_ORIGINS=value)
