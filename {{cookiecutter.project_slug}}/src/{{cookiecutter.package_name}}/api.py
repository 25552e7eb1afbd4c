"""The routes: public ones (health, readiness, OpenAPI) and the example API under /v1."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from flask import Blueprint, Flask, current_app, g, jsonify
from pydantic import Field, StringConstraints, field_serializer
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from .auth import require_api_key
from .db import db
from .errors import NotReady, ResourceNotFound, describe_problem
from .models import ITEM_NAME_LENGTH, Item, RegistryVersion
from .openapi import openapi_document
from .schemas import (
    Answer,
    Body,
    PageQuery,
    Timestamp,
    body,
    paginate,
    query,
    response,
)

public = Blueprint("public", __name__)
v1 = Blueprint("v1", __name__, url_prefix="/v1")

# The largest id a database column holds (SQLite INTEGER, PostgreSQL bigint): a larger
# one in a URL names no item, and must not reach the database as an overflow (a 500).
MAX_ID = 2**63 - 1

# Text a person typed: no control characters, which PostgreSQL refuses (NUL) and which
# would forge lines in a log or a terminal (log injection).
ItemName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=1,
        max_length=ITEM_NAME_LENGTH,
        pattern=r"^[^\x00-\x1f\x7f]*$",
    ),
]


class Health(Answer):
    status: Literal["ok"]


class Ready(Answer):
    status: Literal["ready"]


class ProblemType(Answer):
    type: str
    title: str
    status: int


class SecureData(Answer):
    data: dict[str, Any]


class WhoAmI(Answer):
    name: str
    owner: str
    scopes: list[str]
    expires: Timestamp | None
    fingerprint: str = Field(pattern=r"^[0-9a-f]{12}$")

    @field_serializer("scopes")
    def _sorted(self, scopes: list[str]) -> list[str]:
        return sorted(scopes)


class NewItem(Body):
    name: ItemName


class ItemOut(Answer):
    id: int
    name: str
    owner: str
    created_by: str
    created: Timestamp


class ItemPage(Answer):
    items: list[ItemOut]
    next_cursor: str | None


def init_app(app: Flask) -> None:
    """Register the routes, and the database among the checks of /ready."""
    app.extensions.setdefault("readiness", {})["database"] = _database_answers
    app.register_blueprint(public)
    app.register_blueprint(v1)


@public.get("/health")
@response(Health)
def health():
    """Liveness probe for load balancers: no key, no HTTPS rule, always 200."""
    return {"status": "ok"}


@public.get("/ready")
@response(Ready)
def ready():
    """Readiness probe: 200 when every service the API needs answers, else 503.

    The answer names what is down, never an address or a password.
    """
    down = [name for name, answers in current_app.extensions["readiness"].items() if not answers()]
    if down:
        raise NotReady(f"Not ready: {', '.join(down)} unavailable.")
    return {"status": "ready"}


@public.get("/openapi.json")
def openapi():
    """This document: the OpenAPI 3.1 description of every route, built from the code."""
    return jsonify(openapi_document(current_app))


@public.get("/problems/<code>")
@response(ProblemType)
def problem(code: str):
    """What an error code means: where the ``type`` of an error answer points."""
    described = describe_problem(code)
    if described is None:
        raise ResourceNotFound("No such problem type.")
    return described


@v1.get("/secure-data")
@require_api_key
@response(SecureData)
def secure_data():
    """Data that any valid key may read."""
    return {"data": {"message": "Hello from a protected route.", "key": g.api_key.name}}


@v1.get("/whoami")
@require_api_key
@response(WhoAmI)
def whoami():
    """The key used for this request: name, owner, scopes, expiry (never the secret)."""
    return g.api_key


@v1.get("/items")
@require_api_key("items:read")
@query(PageQuery)
@response(ItemPage)
def list_items(query: PageQuery):
    """The caller's owner's items, newest first, a page at a time (see schemas.paginate)."""
    # Object-level authorisation: only the caller's owner's items, whatever is asked.
    owners_items = select(Item).where(Item.owner == g.api_key.owner)
    items, next_cursor = paginate(owners_items, Item, "item", query)
    return {"items": items, "next_cursor": next_cursor}


@v1.get("/items/<int:item_id>")
@require_api_key("items:read")
@response(ItemOut)
def get_item(item_id: int):
    """One of the caller's owner's items.

    Another owner's item is answered exactly as a missing one, so ids reveal
    nothing (broken object-level authorisation).
    """
    item = None
    if item_id <= MAX_ID:
        item = db.session.scalars(
            select(Item).where(Item.id == item_id, Item.owner == g.api_key.owner)
        ).first()
    if item is None:
        raise ResourceNotFound("No such item.")
    return item


@v1.post("/items")
@require_api_key("items:write")
@body(NewItem)
@response(ItemOut, 201)
def create_item(body: NewItem):
    """Create an item for the caller's owner."""
    item = Item(
        owner=g.api_key.owner,
        name=body.name,
        created_by=g.api_key.name,
        created=datetime.now(UTC),
    )
    db.session.add(item)
    db.session.commit()
    return item


def _database_answers() -> bool:
    # A real read of a table: SQLite answers SELECT 1 without opening its file.
    try:
        db.session.execute(select(RegistryVersion.version))
    except SQLAlchemyError:
        db.session.rollback()
        return False
    return True
