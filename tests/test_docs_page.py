"""The /docs page (use_docs_page): its files follow the option, gunicorn serves it under its
own Content-Security-Policy, and a real browser uses it as a person would.

The browser is the system's Chromium (Debian's ``chromium`` package) driven by
Playwright, which never downloads a browser of its own. Chromium resolves no host
but loopback, so the page can only work if everything it needs comes from the app.
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib

import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from bakery import (
    TEMPLATE_DIR,
    Baked,
    free_port,
    gunicorn_command,
    gunicorn_env,
    text_files,
    wait_until_healthy,
)

# What Swagger UI needs and nothing more (docs.py and security.py of the generated app).
DOCS_PAGE_CSP = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "base-uri": "'none'",
    "form-action": "'none'",
    "frame-ancestors": "'none'",
}
HTTPS = {"X-Forwarded-Proto": "https"}  # as a TLS-terminating proxy (TRUSTED_PROXIES=1) says
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    # Debian's Chromium looks up Google hosts even so: let it resolve nothing but loopback.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
# The README's picture of the page, rewritten by UPDATE_SCREENSHOT=1 python -m pytest ...
README_SCREENSHOT = TEMPLATE_DIR / "docs" / "docs-page.png"


def policy(header: str) -> dict[str, str]:
    """A Content-Security-Policy header as {directive: sources}."""
    directives = (part.strip().split(" ", 1) for part in header.split(";") if part.strip())
    return {name: value for name, value in directives}


def docs_files(baked: Baked) -> list[str]:
    package = f"src/{baked.package}"
    return [
        f"{package}/docs.py",
        f"{package}/templates/docs.html",
        f"{package}/static/docs/init.js",
        "tests/test_docs.py",
    ]


def test_docs_page_files_follow_the_option(baked: Baked):
    """On: the module, page, script, tests and pinned package. Off: no trace of any of them."""
    pyproject = tomllib.loads((baked.root / "pyproject.toml").read_text(encoding="utf-8"))
    dependencies = pyproject["project"]["dependencies"]
    if baked.context["use_docs_page"]:
        for relative in docs_files(baked):
            assert (baked.root / relative).is_file(), relative
        assert any(re.fullmatch(r"flask-swagger-ui==[\d.]+", d) for d in dependencies)
        return
    leftovers = [relative for relative in docs_files(baked) if (baked.root / relative).exists()]
    leftovers += [
        str(path.relative_to(baked.root))
        for path in (baked.root / "src" / baked.package).glob("*")
        if path.name in ("templates", "static")
    ]
    leftovers += [
        str(path.relative_to(baked.root))
        for path, text in text_files(baked.root)
        if re.search(r"swagger|/docs\b|DOCS_PAGE", text, re.IGNORECASE)
    ]
    assert not leftovers, f"docs page traces with use_docs_page off: {leftovers}"


def test_docs_page_ships_in_the_wheel(default_project, install):
    """A non-editable install (as in the Docker image) carries the page and its script."""
    package = install(default_project) / default_project.package
    assert (package / "templates" / "docs.html").is_file()
    assert (package / "static" / "docs" / "init.js").is_file()


@pytest.fixture
def docs_server(default_project, project_copy, start, tmp_path):
    """The default project under gunicorn, in production, behind one trusted proxy hop.

    Returns the base URL and the key from the project's .env (a throwaway key).
    """
    port = free_port()
    env = gunicorn_env(default_project, port, tmp_path, TRUSTED_PROXIES="1")
    root = project_copy(default_project, migrated=True)
    server = start(gunicorn_command(default_project), root, env)
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(server, base)
    return base, env["API_KEYS"]


@pytest.mark.slow
def test_gunicorn_serves_the_docs_page_under_its_own_policy(docs_server):
    """/docs: no key, HTML, its own CSP; everything else keeps the API's; HTTPS rule holds."""
    base, _ = docs_server
    page = requests.get(f"{base}/docs", headers=HTTPS, timeout=10)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert policy(page.headers["Content-Security-Policy"]) == DOCS_PAGE_CSP
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    assert "Strict-Transport-Security" in page.headers

    loaded = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(loaded) >= 4, page.text
    for path in [*loaded, "/openapi.json", "/health"]:
        answer = requests.get(f"{base}{path}", headers=HTTPS, timeout=10)
        assert answer.status_code == 200, path
        assert policy(answer.headers["Content-Security-Policy"])["default-src"] == "'none'", path
        assert "script-src" not in answer.headers["Content-Security-Policy"], path

    hidden = requests.get(f"{base}/docs/swagger-ui/oauth2-redirect.html", headers=HTTPS, timeout=10)
    assert hidden.status_code == 404
    assert hidden.json()["error"] == "not_found"

    plain = requests.get(f"{base}/docs", timeout=10)
    assert plain.status_code == 403
    assert plain.json()["error"] == "https_required"


@pytest.fixture(scope="session")
def chromium() -> str:
    """The system's Chromium. Missing: a loud skip on a workstation, a failure under CI."""
    path = shutil.which("chromium")
    if path is None:
        reason = (
            "NO BROWSER TEST: Debian's Chromium is not installed (apt-get install -y chromium), "
            "so /docs was not tried in a real browser"
        )
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def authorize(page: Page, key: str) -> None:
    """Swagger UI's Authorize dialog: forget any key, give this one, close.

    Buttons are found by their visible text: their accessible names differ
    ("Apply credentials" for the dialog's Authorize).
    """
    page.locator("button.authorize").filter(has_text=re.compile(r"^Authorize$")).first.click()
    dialog = page.locator(".modal-ux")
    expect(dialog).to_be_visible()
    logout = dialog.locator("button").filter(has_text=re.compile(r"^Logout$"))
    if logout.count():
        logout.click()
    dialog.locator("input").fill(key)
    dialog.locator("button").filter(has_text=re.compile(r"^Authorize$")).click()
    dialog.locator("button").filter(has_text=re.compile(r"^Close$")).click()
    expect(dialog).to_be_hidden()


def execute(operation, status: str) -> str:
    """Press Execute on an opened operation; wait for ``status``; return the response body."""
    operation.locator("button").filter(has_text=re.compile(r"^Execute$")).click()
    answer = operation.locator(".live-responses-table tr.response")
    expect(answer.locator(".response-col_status")).to_have_text(status, timeout=15_000)
    return answer.locator(".highlight-code pre").first.inner_text()


@pytest.mark.slow
def test_docs_page_in_a_real_browser(docs_server, chromium, default_project, tmp_path, request):
    """Open /docs, authorize with the key from .env, try /v1/whoami: 200 with the key's
    name; a wrong key: 401. The key never reaches the browser's storage; every request
    goes to the app; the page's policy blocks nothing it needs."""
    base, key = docs_server
    screenshot = tmp_path / "docs-page.png"
    requested: list[str] = []
    console: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 1280, "height": 900}, extra_http_headers=HTTPS
            )
            page = context.new_page()
            page.on("request", lambda sent: requested.append(sent.url))
            page.on("console", lambda message: console.append(message.text))
            page.on("pageerror", lambda error: console.append(f"page error: {error}"))
            page.goto(f"{base}/docs")
            expect(
                page.get_by_text(str(default_project.context["project_name"])).first
            ).to_be_visible()

            authorize(page, key)
            whoami = page.locator("#operations-v1-whoami")
            whoami.locator(".opblock-summary").first.click()
            whoami.locator("button").filter(has_text=re.compile(r"^Try it out\s*$")).click()
            body = execute(whoami, "200")
            assert '"name": "api-keys-1"' in body, body

            # The key lives in the page's memory only (key theft from browser storage).
            stored = page.evaluate(
                "() => JSON.stringify([{...localStorage}, {...sessionStorage}, document.cookie])"
            )
            assert key not in stored, "the key reached the browser's storage"

            # The page from its title down to the 200 answer (bounding boxes are in viewport
            # coordinates, a full-page clip in page coordinates).
            answer_top = whoami.locator(".live-responses-table tr.response").bounding_box()["y"]
            bottom = answer_top + page.evaluate("() => window.scrollY") + 200
            page.screenshot(
                path=screenshot,
                full_page=True,
                clip={"x": 0, "y": 0, "width": 1280, "height": bottom},
            )

            authorize(page, "not-a-key")
            body = execute(whoami, "401")
            assert '"error": "invalid_api_key"' in body, body

            page.reload()
            whoami.locator(".opblock-summary").first.click()
            whoami.locator("button").filter(has_text=re.compile(r"^Try it out\s*$")).click()
            body = execute(whoami, "401")
            assert '"error": "missing_api_key"' in body, "a reload kept the key"
        finally:
            browser.close()

    request.node.user_properties.append(("screenshot", str(screenshot)))
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, README_SCREENSHOT)
    outside = [url for url in requested if not url.startswith(f"{base}/")]
    assert not outside, f"the page reached beyond the app: {outside}"
    blocked = [line for line in console if "Content Security Policy" in line]
    assert not blocked, f"the page's policy blocked what it needs: {blocked}"
