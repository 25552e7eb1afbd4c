"""Schema and OpenAPI libraries for Flask, side by side on one protected route (issue 17).

Each peer serves ``POST /v1/items``: a key check (a stand-in for the project's
``require_api_key("items:write")``), a body ``NewItem`` (``name``, 1 to 200
characters), an answer 201 ``Item``. The peers: APIFlask, flask-openapi3, spectree
and flask-smorest, each written the way its documentation writes a route, and three
baselines: plain Flask (no validation), today's hand-written checks, and the
in-house sketch (decorators over Pydantic models and a walker over ``app.url_map``).

Every criterion is checked by running the peers, in this process, through Flask's
test client and WSGI interface; nothing is read from documentation. The libraries
are not the project's dependencies: install them into an environment of their own.

    python3 -m venv .venv-schema
    .venv-schema/bin/pip install -r benchmarks/requirements-schema-libraries.txt
    .venv-schema/bin/python benchmarks/schema_libraries.py             # about a minute
    .venv-schema/bin/python benchmarks/schema_libraries.py --rounds 40 --batch 2000
    .venv-schema/bin/python benchmarks/schema_libraries.py --offline   # no release history

The release history comes from the package index pip uses (its JSON simple API,
PEP 691 and 700); ``--index URL`` names another. Per-request cost is a ratio to
plain Flask taken side by side: variants interleaved in rounds, in a new random
order each round, the median of the rounds' ratios with their interquartile range.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import html.parser
import inspect
import io
import itertools
import json
import logging
import os
import re
import secrets
import statistics
import sys
import textwrap
import time
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from flask import Flask, Response, current_app, request
from pydantic import BaseModel, Field, ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.test import EnvironBuilder

API_KEY = "benchmark-key"  # the stand-in's one valid key
KEY_HEADER = "X-API-Key"
SCOPE = "items:write"
PATH = "/v1/items"
PROBLEM_JSON = "application/problem+json"
VALID_BODY = b'{"name": "a new item"}'
SECURITY_SCHEME = {"type": "apiKey", "in": "header", "name": KEY_HEADER}
OPENAPI3_NATURAL = "flask-openapi3, validation first"
LIBRARIES = {  # distribution names, for versions and release history
    "APIFlask": "apiflask",
    "flask-openapi3": "flask-openapi3",
    "spectree": "spectree",
    "flask-smorest": "flask-smorest",
}


# --------------------------------------------------------------------------------------
# What every peer shares: problem details, the stand-in key check, the models.


class ProblemError(Exception):
    """An error answered as RFC 9457 problem details, with ``error`` and ``message`` kept."""

    def __init__(self, status: int, code: str, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra

    def response(self) -> Response:
        body = {
            "type": f"https://example.com/problems/{self.code}",
            "title": HTTP_STATUS_CODES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "error": self.code,
            "message": self.detail,
            **self.extra,
        }
        return Response(json.dumps(body), self.status, mimetype=PROBLEM_JSON)


def http_problem(status: int, detail: str | None = None) -> ProblemError:
    """A problem for an HTTP status, its code from the status's name (405: method_not_allowed)."""
    name = HTTP_STATUS_CODES.get(status, "Error")
    code = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return ProblemError(status, code, detail or name)


def field_problem(fields: list[dict]) -> ProblemError:
    """A 422 naming each offending field: ``[{"field": ..., "message": ...}]``."""
    return ProblemError(422, "invalid_body", "The request body is not valid.", errors=fields)


def invalid_body(errors: list[dict]) -> ProblemError:
    """field_problem() from Pydantic's ``errors()``."""
    return field_problem(
        [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in errors]
    )


def problems(app: Flask) -> None:
    """Answer ProblemError and every HTTP error as problem details."""
    app.register_error_handler(ProblemError, ProblemError.response)
    app.register_error_handler(
        HTTPException, lambda error: http_problem(error.code or 500, error.description).response()
    )


def require_api_key(*scopes: str):
    """The stand-in for the project's decorator: one key, 401 otherwise, and the
    view carries ``required_scopes`` as the real one does."""

    def decorate(view):
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            if request.headers.get(KEY_HEADER) != API_KEY:
                raise ProblemError(401, "missing_api_key", f"Send a valid key in {KEY_HEADER}.")
            return view(*args, **kwargs)

        guarded.required_scopes = frozenset(scopes)
        return guarded

    return decorate


class NewItem(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class Item(BaseModel):
    id: int
    name: str


def openapi_path(rule: str) -> str:
    """``/items/<int:item_id>`` -> ``/items/{item_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def add_scopes(app: Flask, document: dict) -> dict:
    """Each protected operation's security requirement, read from ``require_api_key``:
    the adaptation every library needs, plugged into its own hook."""
    for rule in app.url_map.iter_rules():
        scopes = getattr(app.view_functions[rule.endpoint], "required_scopes", None)
        operations = document.get("paths", {}).get(openapi_path(rule.rule), {})
        for method in rule.methods or ():
            if scopes is not None and method.lower() in operations:
                operations[method.lower()]["security"] = [{"ApiKey": sorted(scopes)}]
    return document


# --------------------------------------------------------------------------------------
# The in-house sketch: the lead's design in brief (schemas.py and openapi.py to be).


def body(model):
    """Validate the JSON body as ``model``; the view gets it as ``body``. Below
    ``require_api_key``, so an anonymous request is refused before it is parsed."""

    def decorate(view):
        @functools.wraps(view)
        def validated(*args, **kwargs):
            if not request.is_json:
                raise ProblemError(415, "unsupported_media_type", "Send application/json.")
            try:
                kwargs["body"] = model.model_validate_json(request.get_data())
            except ValidationError as error:
                raise invalid_body(error.errors()) from None
            return view(*args, **kwargs)

        validated.body_model = model
        return validated

    return decorate


def query(model):
    """Validate the query string as ``model``; the view gets it as ``query``."""

    def decorate(view):
        @functools.wraps(view)
        def validated(*args, **kwargs):
            try:
                kwargs["query"] = model.model_validate(request.args.to_dict())
            except ValidationError as error:
                raise invalid_body(error.errors()) from None
            return view(*args, **kwargs)

        validated.query_model = model
        return validated

    return decorate


def response(model, status: int = 200):
    """Serialise what the view returns as ``model``, with ``status``."""

    def decorate(view):
        @functools.wraps(view)
        def serialised(*args, **kwargs):
            value = view(*args, **kwargs)
            value = value if isinstance(value, model) else model.model_validate(value)
            return current_app.response_class(
                value.model_dump_json(), status, mimetype="application/json"
            )

        serialised.response_model, serialised.response_status = model, status
        return serialised

    return decorate


def openapi_document(app: Flask) -> dict:
    """The document from ``app.url_map`` and what the decorators left on each view."""
    schemas: dict = {}

    def ref(model) -> dict:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            }
        }

    paths: dict = {}
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation: dict = {"operationId": f"{rule.endpoint}.{method.lower()}"}
            if hasattr(view, "required_scopes"):
                operation["security"] = [{"ApiKey": sorted(view.required_scopes)}]
            if hasattr(view, "query_model"):
                properties = view.query_model.model_json_schema()["properties"]
                operation["parameters"] = [
                    {"name": n, "in": "query", "schema": s} for n, s in properties.items()
                ]
            if hasattr(view, "body_model"):
                operation["requestBody"] = {"required": True, **ref(view.body_model)}
            answer = {"description": "OK"}
            if hasattr(view, "response_model"):
                answer |= ref(view.response_model)
            operation["responses"] = {str(getattr(view, "response_status", 200)): answer}
            paths.setdefault(openapi_path(rule.rule), {})[method.lower()] = operation
    components = {"schemas": schemas, "securitySchemes": {"ApiKey": SECURITY_SCHEME}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Items", "version": "1"},
        "paths": paths,
        "components": components,
    }


# --------------------------------------------------------------------------------------
# The peers. Each builder makes the app with the library's defaults (``adapted=False``)
# or with the adaptations we would write (``adapted=True``: scopes read from the
# decorator, problem details); ``docs`` leaves the library's documentation routes on.


@dataclass
class Peer:
    name: str
    app: Flask
    document: Callable[[], dict] | None  # the OpenAPI document, None when hand-kept
    view: Callable  # the route as a user writes it
    builder: Callable
    note: str = ""


def build_plain(adapted: bool = True, docs: bool = False) -> Peer:
    app = Flask(__name__, static_folder=None)
    problems(app)

    @app.post(PATH)
    @require_api_key(SCOPE)
    def create_item():
        data = request.get_json()
        return {"id": 1, "name": data["name"]}, 201

    return Peer("plain Flask (no validation)", app, None, create_item, build_plain)


def build_handwritten(adapted: bool = True, docs: bool = False) -> Peer:
    app = Flask(__name__, static_folder=None)
    problems(app)

    @app.post(PATH)
    @require_api_key(SCOPE)
    def create_item():
        body = request.get_json()  # 400 for malformed JSON, 415 for another content type
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise ProblemError(
                422, "invalid_body", 'Send a JSON object with a non-empty string "name".'
            )
        if len(name) > 200:
            raise ProblemError(422, "invalid_body", '"name" must be at most 200 characters.')
        return {"id": 1, "name": name.strip()}, 201

    return Peer("hand-written checks (today)", app, None, create_item, build_handwritten)


def build_inhouse(adapted: bool = True, docs: bool = False) -> Peer:
    app = Flask(__name__, static_folder=None)
    problems(app)
    app.get("/openapi.json")(lambda: openapi_document(app))

    @app.post(PATH)
    @require_api_key(SCOPE)
    @body(NewItem)
    @response(Item, 201)
    def create_item(body: NewItem):
        return Item(id=1, name=body.name)

    return Peer("in-house sketch", app, lambda: openapi_document(app), create_item, build_inhouse)


def build_apiflask(adapted: bool = True, docs: bool = False) -> Peer:
    from apiflask import APIFlask

    app = APIFlask(__name__, static_folder=None, docs_path="/docs" if docs else None)
    app.security_schemes = {"ApiKey": SECURITY_SCHEME}
    app.register_error_handler(ProblemError, ProblemError.response)
    if adapted:
        app.spec_processor(lambda spec: add_scopes(app, spec))

        @app.error_processor
        def problem(error):  # a 422's detail: {"json": {"name": ["message", ...]}}
            fields = [
                {"field": name, "message": message}
                for name, messages in error.detail.get("json", {}).items()
                for message in messages
            ]
            if error.status_code == 422:
                return field_problem(fields).response()
            return http_problem(error.status_code, error.message).response()

    @app.post(PATH)
    @require_api_key(SCOPE)
    @app.input(NewItem, arg_name="body")
    @app.output(Item, status_code=201)
    def create_item(body: NewItem):
        return Item(id=1, name=body.name)

    return Peer("APIFlask", app, lambda: app.spec, create_item, build_apiflask)


def build_openapi3(adapted: bool = True, docs: bool = False) -> Peer:
    from flask_openapi3 import OpenAPI, validate_request

    class ScopedOpenAPI(OpenAPI):  # the document is made here, once
        def generate_spec_json(self):
            super().generate_spec_json()
            add_scopes(self, self.spec_json)

    def problem(error: ValidationError) -> Response:
        return invalid_body(error.errors()).response()

    app = (ScopedOpenAPI if adapted else OpenAPI)(
        __name__,
        static_folder=None,
        doc_ui=docs,
        security_schemes={"ApiKey": SECURITY_SCHEME},
        **({"validation_error_callback": problem} if adapted else {}),
    )
    app.register_error_handler(ProblemError, ProblemError.response)
    if adapted:
        problems(app)

        @app.post(PATH, responses={201: Item})
        @require_api_key(SCOPE)
        @validate_request()  # the library's way to let another decorator run first
        def create_item(body: NewItem):
            return Item(id=1, name=body.name).model_dump(), 201

    else:  # as its documentation writes a route: the body is validated before any decorator

        @app.post(PATH, responses={201: Item})
        @require_api_key(SCOPE)
        def create_item(body: NewItem):
            return Item(id=1, name=body.name).model_dump(), 201

    return Peer("flask-openapi3", app, lambda: app.api_doc, create_item, build_openapi3)


def build_spectree(adapted: bool = True, docs: bool = False) -> Peer:
    from spectree import Response as Answers
    from spectree import SecurityScheme, SecuritySchemeData, SpecTree

    def before(req, resp, req_validation_error, instance, *args):
        if req_validation_error is not None:
            raise invalid_body(req_validation_error.errors())

    class ScopedSpecTree(SpecTree):  # the only way in: the document is built here
        def _generate_spec(self):
            return add_scopes(self.app, super()._generate_spec())

    app = Flask(__name__, static_folder=None)
    app.register_error_handler(ProblemError, ProblemError.response)
    spec = (ScopedSpecTree if adapted else SpecTree)(
        "flask",
        security_schemes=[
            SecurityScheme(
                name="ApiKey",
                data=SecuritySchemeData(type="apiKey", name=KEY_HEADER, field_in="header"),
            )
        ],
        **({"before": before} if adapted else {}),
        **({} if docs else {"page_templates": {}}),
    )
    if adapted:
        problems(app)

    @app.post(PATH)
    @require_api_key(SCOPE)
    @spec.validate(json=NewItem, resp=Answers(HTTP_201=Item))
    def create_item(json: NewItem):
        return Item(id=1, name=json.name), 201

    spec.register(app)
    return Peer("spectree", app, lambda: spec.spec, create_item, build_spectree)


def build_smorest(adapted: bool = True, docs: bool = False) -> Peer:
    import marshmallow as ma
    from apispec import BasePlugin
    from flask_smorest import Api, Blueprint

    class NewItemSchema(ma.Schema):
        name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))

    class ItemSchema(ma.Schema):
        id = ma.fields.Integer()
        name = ma.fields.String()

    class Scopes(BasePlugin):  # an apispec plugin: it sees each rule as it is documented
        def operation_helper(self, path=None, operations=None, rule=None, **kwargs):
            add_scopes(app, {"paths": {path: operations}})

    def problem(error: HTTPException) -> Response:
        messages = getattr(error, "data", {}).get("messages", {}).get("json")
        if error.code == 422 and messages:
            fields = [{"field": n, "message": m} for n, ms in messages.items() for m in ms]
            return field_problem(fields).response()
        return http_problem(error.code or 500, error.description).response()

    app = Flask(__name__, static_folder=None)
    app.config |= {"API_TITLE": "Items", "API_VERSION": "1", "OPENAPI_VERSION": "3.1.0"}
    if docs:
        app.config |= {"OPENAPI_URL_PREFIX": "/", "OPENAPI_SWAGGER_UI_PATH": "/swagger-ui"}
        app.config["OPENAPI_SWAGGER_UI_URL"] = "https://cdn.jsdelivr.net/npm/swagger-ui-dist/"
    api = Api(app, spec_kwargs={"extra_plugins": [Scopes()]} if adapted else {})
    api.spec.components.security_scheme("ApiKey", SECURITY_SCHEME)
    app.register_error_handler(ProblemError, ProblemError.response)
    if adapted:
        app.register_error_handler(HTTPException, problem)
    blp = Blueprint("items", __name__, url_prefix="/v1")

    @blp.route("/items", methods=["POST"])
    @require_api_key(SCOPE)
    @blp.arguments(NewItemSchema)
    @blp.response(201, ItemSchema)
    def create_item(new_item):
        return {"id": 1, "name": new_item["name"]}

    api.register_blueprint(blp)
    return Peer("flask-smorest", app, api.spec.to_dict, create_item, build_smorest)


PEERS = [
    build_plain,
    build_handwritten,
    build_inhouse,
    build_apiflask,
    build_openapi3,
    build_spectree,
    build_smorest,
]


# --------------------------------------------------------------------------------------
# The criteria, each by running the peers.


def post(app: Flask, data: bytes | str, key: str | None = API_KEY, content_type="application/json"):
    headers = {KEY_HEADER: key} if key else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return app.test_client().post(PATH, data=data, headers=headers, content_type=content_type)


def answer(result) -> str:
    """``422 problem+json`` and the like: the status and the kind of body."""
    kind = result.mimetype.split("/")[-1] if result.mimetype else "-"
    return f"{result.status_code} {kind}"


def check_scopes(peer: Peer) -> dict:
    """(a) The operation's security requirement in the generated document."""
    if peer.document is None:
        return {"security": "hand-kept document", "ok": False}
    with peer.app.app_context(), peer.app.test_request_context():
        document = json.loads(json.dumps(peer.document()))
    operation = document.get("paths", {}).get(PATH, {}).get("post", {})
    security = operation.get("security", document.get("security"))
    body_schema = json.dumps(operation.get("requestBody", {}))
    return {
        "security": security,
        "ok": security == [{"ApiKey": [SCOPE]}],
        "openapi": document.get("openapi"),
        "body": '"maxLength": 200' in body_schema or "$ref" in body_schema,
        "paths": sorted(document.get("paths", {})),
    }


def check_errors(peer: Peer) -> dict:
    """(b) What a bad body, malformed JSON, an unknown route and a wrong method answer."""
    app = peer.app
    client = app.test_client()
    bad = post(app, b'{"name": ""}')
    results = {
        "422": answer(bad),
        "422 body": bad.get_data(as_text=True)[:160],
        "malformed": answer(post(app, b'{"name": ')),
        "404": answer(client.get("/nowhere")),
        "405": answer(client.get(PATH)),
    }
    body_json = bad.get_json(silent=True) or {}
    results["errors"] = isinstance(body_json, dict) and bool(body_json.get("errors"))
    results["ok"] = (
        all(results[k].endswith("problem+json") for k in ("422", "malformed", "404", "405"))
        and results["errors"]
        and bad.status_code == 422
    )
    return results


HOSTILE = {
    "lone surrogate": b'{"name": "\\ud800"}',
    "invalid UTF-8": b'{"name": "\xff\xfe"}',
    "NUL in name": b'{"name": "a\\u0000b"}',
    "deep nesting": b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "huge number": b'{"name": 1' + b"0" * 5000 + b"}",
    "trailing garbage": b'{"name": "a"} garbage',
    "JSON in a string": json.dumps(json.dumps({"name": "a"})).encode(),
    "not an object": b"[]",
    "text/plain": b'{"name": "a"}',
    "unknown field": b'{"name": "a", "owner": "someone else"}',
}


def check_hostile(peer: Peer) -> dict:
    """Bodies a fuzzer sends: the status each gets (5xx is a failure; 201 for the
    surrogate or invalid UTF-8 means the string would be stored)."""
    statuses = {}
    for name, data in HOSTILE.items():
        content_type = "text/plain" if name == "text/plain" else "application/json"
        try:
            statuses[name] = post(peer.app, data, content_type=content_type).status_code
        except RecursionError:
            statuses[name] = "RecursionError"
    return statuses


def check_order(peer: Peer) -> dict:
    """(c) Whether the key check runs before validation: an anonymous bad body gets 401
    (key first) or 4xx from validation (validation first)."""
    bad = post(peer.app, b'{"name": ""}', key=None)
    malformed = post(peer.app, b"{", key=None)
    return {
        "bad body, no key": answer(bad),
        "malformed, no key": answer(malformed),
        "key first": bad.status_code == 401 and malformed.status_code == 401,
    }


class Scripts(html.parser.HTMLParser):
    """What a page's scripts need from a CSP: inline code, handlers, other origins."""

    def __init__(self) -> None:
        super().__init__()
        self.found: set[str] = set()
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if any(name.startswith("on") for name in attributes):
            self.found.add("inline handler")
        if tag == "script":
            source = attributes.get("src")
            if source is None:
                self._in_script = True
            elif re.match(r"^(https?:)?//", source):
                self.found.add(f"script from {re.sub(r'^(https?:)?//', '', source).split('/')[0]}")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.found.add("inline script")


def check_pages(peer: Peer) -> dict:
    """(d) The routes the library adds (docs on, then off), and for each HTML page what
    keeps it from running under ``script-src 'self'``."""
    on = peer.builder(adapted=True, docs=True)
    off = peer.builder(adapted=True, docs=False)
    own = {PATH}

    def added(app: Flask) -> list[str]:
        return sorted(r.rule for r in app.url_map.iter_rules() if r.rule not in own)

    pages = {}
    client = on.app.test_client()
    for rule in on.app.url_map.iter_rules():
        if rule.rule in own or rule.arguments or "GET" not in (rule.methods or ()):
            continue
        result = client.get(rule.rule, follow_redirects=True)
        if result.mimetype == "text/html":
            parser = Scripts()
            parser.feed(result.get_data(as_text=True))
            pages[rule.rule] = sorted(parser.found) or ["passes"]
    return {"added (docs on)": added(on.app), "added (docs off)": added(off.app), "pages": pages}


def source_lines(function: Callable) -> int:
    """Lines of code (no blank or comment lines) of a function, its decorators included."""
    text = textwrap.dedent(inspect.getsource(inspect.unwrap(function)))
    return sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))


def check_lines(peer: Peer) -> dict:
    """(f) Lines a user writes per route: decorators, signature and body."""
    return {"route": source_lines(peer.view)}


# --------------------------------------------------------------------------------------
# (e) Per-request cost in process.


def timed_runs(peers: list[Peer], rounds: int, batch: int) -> dict[str, list[float]]:
    """Seconds per valid request, by peer and round; peers interleaved in a new random
    order each round. Every answer must be a 201."""
    environ = EnvironBuilder(
        PATH,
        method="POST",
        data=VALID_BODY,
        content_type="application/json",
        headers={KEY_HEADER: API_KEY},
    ).get_environ()
    statuses: list[str] = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    def one(app) -> None:
        env = dict(environ)
        env["wsgi.input"] = io.BytesIO(VALID_BODY)
        for _ in app(env, start_response):
            pass

    calls = {peer.name: peer.app.wsgi_app for peer in peers}
    for call in calls.values():  # warm-up: first requests fill caches
        for _ in range(200):
            one(call)
    results: dict[str, list[float]] = {name: [] for name in calls}
    pick = secrets.SystemRandom()
    for _ in range(rounds):
        for name in pick.sample(list(calls), len(calls)):
            call = calls[name]
            statuses.clear()
            start = time.perf_counter()
            for _ in range(batch):
                one(call)
            results[name].append((time.perf_counter() - start) / batch)
            if set(statuses) != {"201 CREATED"}:
                raise RuntimeError(f"{name}: answered {sorted(set(statuses))}")
    return results


def ratios(results: dict[str, list[float]], baseline: str) -> dict[str, tuple[float, float, float]]:
    """Median of the rounds' time ratios to ``baseline``, and their interquartile range."""
    out = {}
    for name, times in results.items():
        each = [t / b for t, b in zip(times, results[baseline], strict=True)]
        low, _, high = (
            statistics.quantiles(each, n=4, method="inclusive") if len(each) > 1 else each * 3
        )
        out[name] = (statistics.median(each), low, high)
    return out


# --------------------------------------------------------------------------------------
# (g) Maintenance: releases from the index, support from the installed metadata.


def default_index() -> str:
    """The index pip uses: PIP_INDEX_URL, else pip's default."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    from pip._internal.models.index import PyPI

    return PyPI.simple_url


def releases(index: str, name: str) -> list[tuple[dt.datetime, str]]:
    """Final releases, oldest first, with the time each one's first file was uploaded."""
    from packaging.utils import parse_sdist_filename, parse_wheel_filename
    from packaging.version import Version

    url = f"{index.rstrip('/')}/{name}/"
    accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
    wanted = urllib.request.Request(url, headers=accept)  # noqa: S310 - the index pip uses
    with urllib.request.urlopen(wanted, timeout=30) as reply:  # noqa: S310
        files = json.load(reply)["files"]
    first: dict[Version, dt.datetime] = {}
    for entry in files:
        filename, uploaded = entry["filename"], entry.get("upload-time")
        if not uploaded or entry.get("yanked"):
            continue
        try:
            if filename.endswith(".whl"):
                version = parse_wheel_filename(filename)[1]
            else:
                version = parse_sdist_filename(filename)[1]
        except ValueError:
            continue
        if version.is_prerelease or version.is_devrelease:
            continue
        when = dt.datetime.fromisoformat(uploaded.replace("Z", "+00:00"))
        first[version] = min(first.get(version, when), when)
    return sorted((when, str(version)) for version, when in first.items())


def maintenance(index: str | None, name: str, now: dt.datetime) -> dict:
    info = metadata.metadata(name)
    classifiers = info.get_all("Classifier") or []
    pythons = [c.rsplit(" ", 1)[-1] for c in classifiers if re.fullmatch(r".*Python :: 3\.\d+", c)]
    requires = []
    for requirement in info.get_all("Requires-Dist") or []:
        spec, _, marker = requirement.partition(";")
        extra = re.search(r"extra == .(\w+).", marker)
        if extra and extra.group(1) in ("dev", "docs", "tests"):
            continue
        if re.match(r"(?i)(flask|werkzeug|pydantic|marshmallow)(\[[^]]*\])?\s*([<>=!~]|$)", spec):
            requires.append(spec.replace(" ", "") + (f" [{extra.group(1)}]" if extra else ""))
    facts = {
        "installed": metadata.version(name),
        "requires-python": info.get("Requires-Python") or "not declared",
        "pythons": ", ".join(sorted(pythons, key=lambda v: tuple(map(int, v.split("."))))),
        "requires": ", ".join(dict.fromkeys(requires)),
    }
    if index is None:
        return facts
    try:
        history = releases(index, name)
    except OSError as error:
        facts["history"] = f"index not reached: {error}"
        return facts
    latest, version = history[-1]
    year = [when for when, _ in history if now - when <= dt.timedelta(days=365)]
    gaps = [(b[0] - a[0]).days for a, b in itertools.pairwise(history[-11:])]
    facts |= {
        "latest": f"{version} ({latest:%Y-%m-%d}, {(now - latest).days} days ago)",
        "releases in 12 months": len(year),
        "median gap, last 10": f"{statistics.median(gaps):.0f} days" if gaps else "-",
        "first release": f"{history[0][0]:%Y-%m-%d}",
    }
    return facts


# --------------------------------------------------------------------------------------
# The report.

MAINTENANCE = [
    "installed",
    "latest",
    "releases in 12 months",
    "median gap, last 10",
    "first release",
    "requires-python",
    "pythons",
    "requires",
]
SUMMARY = [
    "peer",
    "version",
    "(a) scopes from the decorator: default / adapted",
    "(b) bad body: default / problem+json adapted",
    "(c) runs first: default / adapted",
    "(d) routes added, docs on",
    "docs off",
    "pages vs script-src 'self'",
    "(e) time vs plain Flask",
    "(f) route lines",
    "hostile bodies not 400/422 (adapted)",
]


def cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_row(peer: Peer, f: dict) -> list[object]:
    def yes(ok: bool) -> str:
        return "yes" if ok else "no"

    def first(order: dict) -> str:
        return "key" if order["key first"] else "validation"

    median, low, high = f["cost"]
    pages = "; ".join(f"{page}: {', '.join(v)}" for page, v in f["pages"]["pages"].items())
    return [
        peer.name,
        metadata.version(LIBRARIES[peer.name]) if peer.name in LIBRARIES else "-",
        f"{yes(f['scopes (default)']['ok'])} / {yes(f['scopes (adapted)']['ok'])}",
        f"{f['errors (default)']['422']} / {yes(f['errors (adapted)']['ok'])}",
        f"{first(f['order (default)'])} / {first(f['order (adapted)'])}",
        ", ".join(f["pages"]["added (docs on)"]) or "none",
        ", ".join(f["pages"]["added (docs off)"]) or "none",
        pages or "-",
        f"{median:.2f}x ({low:.2f}-{high:.2f})",
        f["lines"]["route"],
        ", ".join(f"{k} {v}" for k, v in f["hostile (adapted)"].items() if v not in (400, 422)),
    ]


def report(peers: list[Peer], findings: dict, cost: dict, header: str) -> None:
    print("# Schema and OpenAPI libraries for Flask, side by side\n")
    print(header + "\n")
    print(table(SUMMARY, [summary_row(peer, findings[peer.name]) for peer in peers]))
    median, low, high = cost[OPENAPI3_NATURAL]
    print(f"\n{OPENAPI3_NATURAL}, as its documentation writes a route: {median:.2f}x ", end="")
    print(f"({low:.2f}-{high:.2f}) the time of plain Flask.")
    sketch = sum(map(source_lines, (body, query, response, openapi_document)))
    print(
        f"Code we would own: the in-house sketch, {sketch} lines (body, query, response, "
        f"openapi_document); add_scopes, which each library needs, {source_lines(add_scopes)}.\n"
    )
    rows = []
    for peer in peers:
        facts = findings[peer.name].get("maintenance")
        if facts:
            rows.append([peer.name, *(facts.get(name, "-") for name in MAINTENANCE)])
    print(table(["library", *MAINTENANCE], rows) + "\n")
    for peer in peers:
        f = findings[peer.name]
        print(f"## {peer.name}\n")
        for name in (*(n for n in f if "(" in n), "pages", "lines"):
            print(f"- {name}: {json.dumps(f[name], default=str)}")
        print(f"- median time per request in this run: {f['us per request']:.0f} us\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="timing rounds (default 20)")
    parser.add_argument("--batch", type=int, default=1000, help="requests per peer and round")
    parser.add_argument("--index", default=None, help="package index (default: pip's)")
    parser.add_argument("--offline", action="store_true", help="skip the release history")
    parser.add_argument("--json", help="also write every finding to this file")
    arguments = parser.parse_args(argv)
    now = dt.datetime.now(dt.UTC)
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    logging.disable(logging.CRITICAL)  # the 500s some peers answer are counted, not logged
    peers = [build(adapted=True) for build in PEERS]
    defaults = {peer.name: peer.builder(adapted=False) for peer in peers}
    findings: dict = {}
    for peer in peers:
        default = defaults[peer.name]
        findings[peer.name] = {
            "scopes (default)": check_scopes(default),
            "scopes (adapted)": check_scopes(peer),
            "errors (default)": check_errors(default),
            "errors (adapted)": check_errors(peer),
            "order (default)": check_order(default),
            "order (adapted)": check_order(peer),
            "hostile (adapted)": check_hostile(peer),
            "pages": check_pages(peer),
            "lines": check_lines(peer),
        }
    started = time.perf_counter()
    # flask-openapi3 as its documentation writes a route (validation first) takes another
    # path than with validate_request(): timed too.
    natural = dataclasses.replace(defaults["flask-openapi3"], name=OPENAPI3_NATURAL)
    timing = timed_runs([*peers, natural], arguments.rounds, arguments.batch)
    elapsed = time.perf_counter() - started
    cost = ratios(timing, peers[0].name)
    index = None if arguments.offline else (arguments.index or default_index())
    for peer in peers:
        findings[peer.name]["cost"] = cost[peer.name]
        findings[peer.name]["us per request"] = statistics.median(timing[peer.name]) * 1e6
        if peer.name in LIBRARIES:
            findings[peer.name]["maintenance"] = maintenance(index, LIBRARIES[peer.name], now)
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("flask", "werkzeug", "pydantic", "marshmallow")
    )
    report(
        peers,
        findings,
        cost,
        f"Python {sys.version.split()[0]}; {versions}; load average before the run {load}.\n"
        f"Timing: {arguments.rounds} rounds x {arguments.batch} valid POST {PATH} per peer, "
        f"interleaved, {elapsed:.0f} s; ratio = time per request / plain Flask's, median (IQR).",
    )
    if arguments.json:
        with open(arguments.json, "w", encoding="utf-8") as handle:
            json.dump(
                {**findings, OPENAPI3_NATURAL: {"cost": cost[OPENAPI3_NATURAL]}},
                handle,
                indent=2,
                default=str,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
