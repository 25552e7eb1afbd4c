"""The routes: public ones (health, OpenAPI) and the example API under /v1."""

from __future__ import annotations

from collections import deque
from threading import Lock

from flask import Blueprint, Flask, current_app, g, jsonify, request

from .auth import require_api_key
from .errors import InvalidBody
from .openapi import openapi_document

public = Blueprint("public", __name__)
v1 = Blueprint("v1", __name__, url_prefix="/v1")

MAX_NAME_LENGTH = 200
# The example store keeps only the newest items, so it cannot be used to fill memory.
MAX_ITEMS = 1000


class ItemStore:
    """An in-memory list of items, one per process: replace it with your database."""

    def __init__(self) -> None:
        self._items: deque[dict[str, object]] = deque(maxlen=MAX_ITEMS)
        self._next_id = 1
        self._lock = Lock()

    def add(self, name: str, created_by: str) -> dict[str, object]:
        with self._lock:
            item = {"id": self._next_id, "name": name, "created_by": created_by}
            self._next_id += 1
            self._items.append(item)
        return item

    def all(self) -> list[dict[str, object]]:
        with self._lock:
            return list(self._items)


def init_app(app: Flask) -> None:
    """Register the routes and give the app its own item store."""
    app.extensions["items"] = ItemStore()
    app.register_blueprint(public)
    app.register_blueprint(v1)


@public.get("/health")
def health():
    """Liveness probe for load balancers: no key, no HTTPS rule, always 200."""
    return {"status": "ok"}


@public.get("/openapi.json")
def openapi():
    """The OpenAPI 3.1 description of every route, for clients and docs tools."""
    return jsonify(openapi_document())


@v1.get("/secure-data")
@require_api_key
def secure_data():
    """Any valid key may read this."""
    return {"data": {"message": "Hello from a protected route.", "key": g.api_key.name}}


@v1.get("/whoami")
@require_api_key
def whoami():
    """Tell the caller which key it used, with its scopes and expiry (never the secret)."""
    key = g.api_key
    return {
        "name": key.name,
        "scopes": sorted(key.scopes),
        "expires": key.expires.isoformat() if key.expires else None,
        "fingerprint": key.fingerprint,
    }


@v1.get("/items")
@require_api_key("items:read")
def list_items():
    """List the items: needs the ``items:read`` scope."""
    return {"items": current_app.extensions["items"].all()}


@v1.post("/items")
@require_api_key("items:write")
def create_item():
    """Create an item from ``{"name": "..."}``: needs the ``items:write`` scope."""
    body = request.get_json()  # 400 for malformed JSON, 415 for another content type
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise InvalidBody('Send a JSON object with a non-empty string "name".')
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidBody(f'"name" must be at most {MAX_NAME_LENGTH} characters.')
    item = current_app.extensions["items"].add(name.strip(), created_by=g.api_key.name)
    return item, 201
