"""Bodies and query strings checked against Pydantic models before a view runs.

Three decorators, written under ``@require_api_key`` so that a request is
authenticated before its body is even read::

    @v1.post("/items")
    @require_api_key("items:write")
    @body(NewItem)
    @response(ItemOut, 201)
    def create_item(body: NewItem): ...

The view receives a typed, validated object; a body or query that does not fit
answers 422 with the offending fields under ``errors``. The same attributes
let openapi.py describe the route: a route written this way documents itself.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from flask import Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, ValidationError, WithJsonSchema
from sqlalchemy import Select
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from .db import db
from .errors import InvalidBody, InvalidParameter

# A moment in an answer, written as datetime.isoformat() writes it (2026-12-06T14:00:00+00:00),
# like the API-Key-Expires header and `flask keys list --json`.
Timestamp = Annotated[
    datetime,
    PlainSerializer(datetime.isoformat, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

PAGE_SIZE, MAX_PAGE_SIZE = 50, 100


class Body(BaseModel):
    """The base of every request body.

    Unknown fields are refused, not ignored: a client learns of its typo, and no
    field the view did not declare can reach the database (mass assignment).
    Strict types: ``"1"`` is not a number and ``1`` is not a string.
    """

    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    """The base of every query-string model: values arrive as text and are converted
    (``?limit=10`` is the integer 10); unknown parameters are ignored, as by most APIs."""

    model_config = ConfigDict(extra="ignore")


class Answer(BaseModel):
    """The base of every response model: read from a dict or from a database row."""

    model_config = ConfigDict(from_attributes=True)


class PageQuery(Query):
    """``?limit=`` and ``?cursor=`` of a listing that comes a page at a time."""

    limit: int = Field(PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    cursor: str | None = Field(None, max_length=100)


def paginate(statement: Select, model: Any, kind: str, query: PageQuery) -> tuple[list, str | None]:
    """The page of ``statement``'s rows that ``query`` asks for, newest first, and the
    cursor of the next page (None on the last).

    Keyset pagination: the cursor names the last row of this page, so a page costs
    one index range scan however deep, and rows added meanwhile are not repeated.
    """
    statement = statement.order_by(model.id.desc())
    if query.cursor is not None:
        statement = statement.where(model.id < decode_cursor(kind, query.cursor))
    rows = db.session.scalars(statement.limit(query.limit + 1)).all()
    page = list(rows[: query.limit])
    return page, encode_cursor(kind, page[-1].id) if len(rows) > query.limit else None


def encode_cursor(kind: str, row_id: int) -> str:
    """The cursor after row ``row_id`` of a listing of ``kind`` (keyset pagination)."""
    return base64.urlsafe_b64encode(f"{kind}:{row_id}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> int:
    """The row id a cursor names; a forged or damaged cursor is a 422, never a 500."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        named, _, number = text.partition(":")
        if named == kind and number.isdigit() and len(number) <= 18:
            return int(number)
    except (binascii.Error, UnicodeError, ValueError):
        pass
    raise InvalidParameter("cursor is not one this API gave out; start again without it.")


def body(model: type[BaseModel]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Validate the JSON body against ``model`` and pass it to the view as ``body``."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def validated(*args: Any, **kwargs: Any) -> Any:
            return view(*args, body=_parse(model, _json_body(), InvalidBody), **kwargs)

        validated.body_model = model  # type: ignore[attr-defined]
        return validated

    return decorate


def query(model: type[BaseModel]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Validate the query string against ``model`` and pass it to the view as ``query``."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def validated(*args: Any, **kwargs: Any) -> Any:
            arguments = request.args.to_dict()
            return view(*args, query=_parse(model, arguments, InvalidParameter), **kwargs)

        validated.query_model = model  # type: ignore[attr-defined]
        return validated

    return decorate


def response(
    model: type[BaseModel] | None, status: int = 200, *, errors: tuple[int, ...] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Answer what the view returns (a model, a dict or a database row) as ``model``:
    only the fields it declares leave the server (excessive data exposure). With no
    model the answer has no body (``@response(None, 204)``). ``errors`` names the
    statuses the view itself may raise (409, ...), for the document."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def serialised(*args: Any, **kwargs: Any) -> Any:
            answer = view(*args, **kwargs)
            if isinstance(answer, Response):
                return answer
            if model is None:
                return "", status
            document = model.model_validate(answer).model_dump(mode="json")
            return jsonify(document), status

        serialised.response_model = model  # type: ignore[attr-defined]
        serialised.response_status = status  # type: ignore[attr-defined]
        # Added to those of the decorators below, for the document (openapi.py).
        serialised.error_statuses = (  # type: ignore[attr-defined]
            *getattr(view, "error_statuses", ()),
            *errors,
        )
        return serialised

    return decorate


def _json_body() -> bytes:
    """The raw body of a JSON request: 415 for another content type, 413 when too large
    (security.APIRequest, chunked bodies included)."""
    # Only a JSON content type: a browser sends text/plain across origins without asking
    # first (cross-site request forgery), never application/json.
    if not request.is_json:
        raise UnsupportedMediaType("Send a JSON body with Content-Type: application/json.")
    return request.get_data(cache=True)


def _parse(model: type[BaseModel], data: bytes | dict[str, str], error: type) -> Any:
    """``data`` as ``model``, or the APIError listing each field that does not fit.

    Pydantic's JSON parser refuses what a database would choke on or a log would
    hide: invalid UTF-8, lone surrogates, nesting past its recursion limit,
    trailing garbage, each a 400; field errors are a 422. The errors name the
    field and the rule, never the value sent (it may be a secret).
    """
    try:
        if isinstance(data, bytes):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as invalid:
        problems = invalid.errors(include_url=False, include_input=False, include_context=False)
        if any(problem["type"] == "json_invalid" for problem in problems):
            raise BadRequest("The body is not valid JSON.") from None
        fields = [
            {"loc": list(problem["loc"]), "msg": problem["msg"], "type": problem["type"]}
            for problem in problems
        ]
        raise error(f"{fields[0]['msg']}: {_where(fields[0]['loc'])}.", errors=fields) from None


def _where(loc: list[str | int]) -> str:
    return ".".join(str(part) for part in loc) or "the body"
