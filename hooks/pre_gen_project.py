"""Validate the answers before anything is written.

Standard library only: cookiecutter may run where Flask is not installed
(``pipx run cookiecutter ...``). The answers arrive as one JSON document
rendered with ``tojson``, so a quote or a backslash in any answer is data,
never code (template injection into the hook).
"""

import json
import keyword
import re
import sys

ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

SLUG = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")
MAX_SLUG_LENGTH = 50
PACKAGE = re.compile(r"[a-z_][a-z0-9_]*")
KEY_PREFIX = re.compile(r"[a-z][a-z0-9]{1,15}")
# RFC 9110 token characters: what an HTTP field name may contain.
HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers that proxies, servers or browsers already give a meaning to.
RESERVED_HEADERS = {
    "authorization", "connection", "content-length", "content-type", "cookie", "host",
    "transfer-encoding", "x-forwarded-for", "x-forwarded-proto", "x-request-id",
}  # fmt: skip
# Import names the generated project already depends on: shadowing one breaks it.
DEPENDENCY_NAMES = {
    "click",
    "cryptography",
    "dotenv",
    "flask",
    "flask_swagger_ui",
    "gunicorn",
    "jinja2",
    "limits",
    "pydantic",
    "pythonjsonlogger",
    "redis",
    "tomli_w",
    "werkzeug",
}
# PEP 440 public versions, the common forms.
VERSION = re.compile(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
FREE_TEXT = ("project_name", "description", "author_name", "author_email")
BOOLEANS = ("use_rate_limiting", "use_docker", "use_docs_page", "use_secret_scanning")
CHOICES = {
    "ci": ("github", "none"),
    "license": ("MIT", "Apache-2.0", "BSD-3-Clause", "Proprietary"),
}


def problems(answers):
    """Yield one readable sentence per answer that would produce a broken project."""
    for name in FREE_TEXT:
        if CONTROL.search(answers[name]):
            yield f"{name} must not contain control characters such as line breaks"
    if not answers["project_name"].strip():
        yield "project_name must not be empty"
    if len(answers["project_slug"]) > MAX_SLUG_LENGTH:
        yield f"project_slug must be at most {MAX_SLUG_LENGTH} characters; give a shorter one"
    elif not SLUG.fullmatch(answers["project_slug"]):
        yield (
            f"project_slug must start with a lower-case letter and use only a-z, 0-9 and '-' "
            f"(got {answers['project_slug']!r})"
        )
    package = answers["package_name"]
    if not PACKAGE.fullmatch(package):
        yield f"package_name must be a lower-case Python identifier (got {package!r})"
    elif keyword.iskeyword(package) or keyword.issoftkeyword(package):
        yield f"package_name must not be a Python keyword (got {package!r})"
    elif package in sys.stdlib_module_names or package in DEPENDENCY_NAMES:
        yield f"package_name must not shadow the module {package!r}; choose another name"
    if not KEY_PREFIX.fullmatch(answers["key_prefix"]):
        yield (
            "key_prefix must be 2-16 characters, a lower-case letter then letters or digits "
            f"(got {answers['key_prefix']!r})"
        )
    header = answers["api_key_header"]
    if not HTTP_TOKEN.fullmatch(header):
        yield f"api_key_header must be an HTTP header name (RFC 9110 token) (got {header!r})"
    elif header.lower() in RESERVED_HEADERS:
        yield f"api_key_header must not be {header!r}: that header already has a meaning"
    if not VERSION.fullmatch(answers["version"]):
        yield f"version must be a PEP 440 version such as 0.1.0 (got {answers['version']!r})"
    for name in BOOLEANS:
        if not isinstance(answers[name], bool):
            yield f"{name} must be true or false (got {answers[name]!r})"
    for name, allowed in CHOICES.items():
        if answers[name] not in allowed:
            yield f"{name} must be one of {', '.join(allowed)} (got {answers[name]!r})"


def main():
    """Print the first problem as one line and stop generation (exit 1)."""
    for problem in problems(ANSWERS):
        print(f"ERROR: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
