"""The routes: public ones (health, readiness, OpenAPI) and the example API under /v1."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from flask import Blueprint, Flask, current_app, g, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from .auth import require_api_key
from .db import db
from .errors import InvalidBody, InvalidParameter, NotReady, ResourceNotFound
from .models import ITEM_NAME_LENGTH, Item, RegistryVersion
from .openapi import openapi_document

public = Blueprint("public", __name__)
v1 = Blueprint("v1", __name__, url_prefix="/v1")

PAGE_SIZE, MAX_PAGE_SIZE = 50, 100
# The largest id a database column holds (SQLite INTEGER, PostgreSQL bigint): a larger
# one in a URL names no item, and must not reach the database as an overflow (a 500).
MAX_ID = 2**63 - 1


def init_app(app: Flask) -> None:
    """Register the routes, and the database among the checks of /ready."""
    app.extensions.setdefault("readiness", {})["database"] = _database_answers
    app.register_blueprint(public)
    app.register_blueprint(v1)


@public.get("/health")
def health():
    """Liveness probe for load balancers: no key, no HTTPS rule, always 200."""
    return {"status": "ok"}


@public.get("/ready")
def ready():
    """Readiness probe: 200 when every service the API needs answers, else 503 naming
    what is down (never an address or a password)."""
    down = [name for name, answers in current_app.extensions["readiness"].items() if not answers()]
    if down:
        raise NotReady(f"Not ready: {', '.join(down)} unavailable.")
    return {"status": "ready"}


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
    """Tell the caller which key it used, with its owner, scopes and expiry (never the secret)."""
    key = g.api_key
    return {
        "name": key.name,
        "owner": key.owner,
        "scopes": sorted(key.scopes),
        "expires": key.expires.isoformat() if key.expires else None,
        "fingerprint": key.fingerprint,
    }


@v1.get("/items")
@require_api_key("items:read")
def list_items():
    """The caller's owner's items, newest first, a page at a time: needs ``items:read``.

    Keyset pagination: ``next_cursor`` names the last item of this page, so a page
    costs one index range scan however deep, and items added meanwhile are not
    repeated.
    """
    limit = _page_size(request.args.get("limit"))
    # Object-level authorisation: only the caller's owner's items, whatever is asked.
    query = select(Item).where(Item.owner == g.api_key.owner).order_by(Item.id.desc())
    cursor = request.args.get("cursor")
    if cursor is not None:
        query = query.where(Item.id < _decode_cursor(cursor))
    items = db.session.scalars(query.limit(limit + 1)).all()
    page, more = items[:limit], len(items) > limit
    return {
        "items": [_item(item) for item in page],
        "next_cursor": _encode_cursor(page[-1].id) if more else None,
    }


@v1.get("/items/<int:item_id>")
@require_api_key("items:read")
def get_item(item_id: int):
    """One of the caller's owner's items. Another owner's item is answered exactly as a
    missing one, so ids reveal nothing (broken object-level authorisation)."""
    item = None
    if item_id <= MAX_ID:
        item = db.session.scalars(
            select(Item).where(Item.id == item_id, Item.owner == g.api_key.owner)
        ).first()
    if item is None:
        raise ResourceNotFound("No such item.")
    return _item(item)


@v1.post("/items")
@require_api_key("items:write")
def create_item():
    """Create an item from ``{"name": "..."}`` for the caller's owner: needs ``items:write``."""
    body = request.get_json()  # 400 for malformed JSON, 415 for another content type
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise InvalidBody('Send a JSON object with a non-empty string "name".')
    if len(name) > ITEM_NAME_LENGTH:
        raise InvalidBody(f'"name" must be at most {ITEM_NAME_LENGTH} characters.')
    item = Item(
        owner=g.api_key.owner,
        name=name.strip(),
        created_by=g.api_key.name,
        created=datetime.now(UTC),
    )
    db.session.add(item)
    db.session.commit()
    return _item(item), 201


def _item(item: Item) -> dict[str, object]:
    return {
        "id": item.id,
        "name": item.name,
        "owner": item.owner,
        "created_by": item.created_by,
        "created": item.created.isoformat(),
    }


def _page_size(raw: str | None) -> int:
    if raw is None:
        return PAGE_SIZE
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_PAGE_SIZE):
        raise InvalidParameter(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}.")
    return int(raw)


def _encode_cursor(item_id: int) -> str:
    return base64.urlsafe_b64encode(f"item:{item_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    """The id a cursor names; a forged or damaged cursor is a 422, never a 500."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        kind, _, number = text.partition(":")
        if kind == "item" and number.isdigit() and len(number) <= 18:
            return int(number)
    except (binascii.Error, UnicodeError, ValueError):
        pass
    raise InvalidParameter("cursor is not one this API gave out; start again without it.")


def _database_answers() -> bool:
    # A real read of a table: SQLite answers SELECT 1 without opening its file.
    try:
        db.session.execute(select(RegistryVersion.version))
    except SQLAlchemyError:
        db.session.rollback()
        return False
    return True
