"""The interactive docs at /docs (docs.py): self-hosted, no inline code, its own policy."""

from html.parser import HTMLParser

import pytest

from {{ cookiecutter.package_name }}.config import API_KEY_HEADER
from {{ cookiecutter.package_name }}.openapi import TITLE
from {{ cookiecutter.package_name }}.security import API_HEADERS, DOCS_PAGE_CSP

HTTPS = "https://localhost"
API_CSP = API_HEADERS["Content-Security-Policy"]


class Page(HTMLParser):
    """What a browser would load from the page, and any code written into it."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.title = ""
        self.urls: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.inline_code: list[str] = []
        self._in: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self._in.append(tag)
        if tag == "script":
            self.scripts.append(attributes)
        if tag == "style":
            self.inline_code.append("<style>")
        for name, value in attributes.items():
            if name.startswith("on") or name == "style":
                self.inline_code.append(f"{tag} {name}={value!r}")
            if name in ("src", "href"):
                self.urls.append(value or "")

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data):
        if self._in and self._in[-1] == "title":
            self.title += data
        elif self._in and self._in[-1] in ("script", "style") and data.strip():
            self.inline_code.append(data.strip()[:40])


@pytest.fixture
def page(client):
    response = client.get("/docs")
    assert response.status_code == 200
    return response


def test_docs_page_needs_no_key(client, page):
    assert page.mimetype == "text/html"
    assert "/openapi.json" in page.get_data(as_text=True)
    assert client.get("/openapi.json").status_code == 200


def test_docs_page_shows_the_project_name(page):
    assert Page(page.get_data(as_text=True)).title == f"{TITLE} · API docs"


def test_cross_site_scripting_docs_page_has_no_inline_code(page):
    parsed = Page(page.get_data(as_text=True))
    assert parsed.inline_code == []
    assert parsed.scripts, "the page loads no script"
    assert all(script.get("src") for script in parsed.scripts)


def test_cross_site_scripting_docs_page_loads_only_this_servers_files(client, page):
    urls = Page(page.get_data(as_text=True)).urls
    assert urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.get_data(), url


def test_cross_site_scripting_docs_page_has_its_own_policy(page):
    policy = page.headers["Content-Security-Policy"]
    assert policy == DOCS_PAGE_CSP
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert "unsafe" not in policy


def test_clickjacking_docs_page_cannot_be_framed(page):
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "path",
    ["/openapi.json", "/health", "/nowhere", "/docs/swagger-ui/swagger-ui.css", "/docs/"],
)
def test_every_other_answer_keeps_the_api_policy(client, key, path):
    response = client.get(path, headers={API_KEY_HEADER: key})
    assert response.headers["Content-Security-Policy"] == API_CSP
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "name",
    [
        "oauth2-redirect.html",
        "swagger-ui-standalone-preset.js",
        "..%2F..%2Fdocs.py",
        "../../__init__.py",
    ],
)
def test_only_the_files_the_page_loads_are_served(client, name):
    response = client.get(f"/docs/swagger-ui/{name}")
    assert response.status_code == 404
    assert response.json["error"] == "not_found"


def test_key_storage_docs_page_keeps_the_key_in_memory_only(client):
    script = client.get("/static/docs/init.js").get_data(as_text=True)
    assert "persistAuthorization: false" in script
    assert "validatorUrl: null" in script


def test_credential_over_plaintext_docs_page_follows_the_https_rule(make_app):
    client = make_app(APP_ENV="production").test_client()
    plain = client.get("/docs")
    assert plain.status_code == 403
    assert plain.json["error"] == "https_required"
    assert plain.headers["Content-Security-Policy"] == API_CSP
    secure = client.get("/docs", base_url=HTTPS)
    assert secure.status_code == 200
    assert secure.headers["Content-Security-Policy"] == DOCS_PAGE_CSP
    assert "Strict-Transport-Security" in secure.headers
