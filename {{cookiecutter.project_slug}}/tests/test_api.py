"""The example routes (api.py): health, readiness, secure data, and items in the database,
each owner's own, a page at a time."""

import base64
import os
from datetime import UTC, datetime

import pytest
from problems import problem
from sqlalchemy import select

from {{ cookiecutter.package_name }}.config import API_KEY_HEADER
from {{ cookiecutter.package_name }}.db import db
from {{ cookiecutter.package_name }}.models import ITEM_NAME_LENGTH, Item
from {{ cookiecutter.package_name }}.schemas import MAX_PAGE_SIZE, PAGE_SIZE

# Headers that differ between any two responses, whatever they answer.
{%- if cookiecutter.use_rate_limiting %}
PER_REQUEST_HEADERS = ("X-Request-ID", "X-RateLimit-Remaining", "X-RateLimit-Reset", "RateLimit")
{%- else %}
PER_REQUEST_HEADERS = ("X-Request-ID",)
{%- endif %}


def stored_items(app):
    """Every item in the app's database, whoever owns it: (owner, name), oldest first."""
    with app.app_context():
        rows = db.session.scalars(select(Item).order_by(Item.id))
        return [(item.owner, item.name) for item in rows]


def add_items(app, owner, count):
    """Put ``count`` items of ``owner`` straight into the database; return their ids."""
    now = datetime.now(UTC)
    with app.app_context():
        items = [
            Item(owner=owner, name=f"item {n}", created_by=owner, created=now) for n in range(count)
        ]
        db.session.add_all(items)
        db.session.commit()
        return [item.id for item in items]


def cursor_of(text):
    """A cursor as the API writes one, with any text inside (to forge one)."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def list_items(client, key, **params):
    return client.get("/v1/items", query_string=params, headers={API_KEY_HEADER: key})


def walk(client, key, **params):
    """Every page of the key's items, following next_cursor; return the pages."""
    pages = []
    while True:
        response = list_items(client, key, **params)
        assert response.status_code == 200, response.json
        pages.append(response.json)
        if pages[-1]["next_cursor"] is None:
            return pages
        params["cursor"] = pages[-1]["next_cursor"]


@pytest.fixture
def owners(make_app, registry_key):
    """An app and three keys made as ``flask keys create --owner`` makes them: two of the
    owner acme (its CI and a laptop), one of the owner globex. Returns (app, keys by name)."""
    made = {
        "acme-ci": registry_key("acme-ci", owner="acme")[0],
        "acme-laptop": registry_key("acme-laptop", owner="acme")[0],
        "globex": registry_key("globex", owner="globex")[0],
    }
    return make_app(), made


def test_health_needs_no_key(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_secure_data(client, key):
    response = client.get("/v1/secure-data", headers={API_KEY_HEADER: key})
    assert response.status_code == 200
    assert "data" in response.json


def test_ready_when_the_database_answers(client):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json == {"status": "ready"}


def test_ready_is_503_naming_the_database_when_it_cannot_be_reached(make_app, key, logs):
    app = make_app()
    client = app.test_client()
    # The database file becomes a directory: SQLite can no longer open it.
    os.remove("instance/app.db")
    os.mkdir("instance/app.db")
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json["error"] == "not_ready"
    assert "database" in response.json["message"]
    for detail in ("sqlite", "app.db", "instance", os.getcwd()):
        assert detail not in response.get_data(as_text=True)
    assert "Traceback" not in logs.text
    # The liveness probe and the key check do not depend on the database.
    assert client.get("/health").status_code == 200
    assert client.get("/v1/whoami", headers={API_KEY_HEADER: key}).status_code == 200


def test_create_and_list_items(client, key):
    headers = {API_KEY_HEADER: key}
    assert client.get("/v1/items", headers=headers).json == {"items": [], "next_cursor": None}
    created = client.post("/v1/items", json={"name": "  first  "}, headers=headers)
    longest = client.post("/v1/items", json={"name": "é" * ITEM_NAME_LENGTH}, headers=headers)
    assert created.status_code == 201
    assert created.json == {
        "id": created.json["id"],
        "name": "first",
        "owner": "api-keys-1",
        "created_by": "api-keys-1",
        "created": created.json["created"],
    }
    assert datetime.fromisoformat(created.json["created"]).utcoffset().total_seconds() == 0
    assert longest.status_code == 201
    assert longest.json["id"] > created.json["id"]
    # Newest first.
    assert client.get("/v1/items", headers=headers).json == {
        "items": [longest.json, created.json],
        "next_cursor": None,
    }
    assert client.get(f"/v1/items/{created.json['id']}", headers=headers).json == created.json


def test_items_are_stored_for_the_owner_of_the_key(owners):
    app, made = owners
    response = app.test_client().post(
        "/v1/items", json={"name": "invoice"}, headers={API_KEY_HEADER: made["acme-ci"]}
    )
    assert response.status_code == 201
    assert (response.json["owner"], response.json["created_by"]) == ("acme", "acme-ci")
    assert stored_items(app) == [("acme", "invoice")]


def test_mass_assignment_fields_the_body_may_not_set_are_refused(owners):
    """The owner comes from the key, never the body: a body naming it, or any field the
    model does not declare, is refused with the fields named, and nothing is stored."""
    app, made = owners
    response = app.test_client().post(
        "/v1/items",
        json={"name": "planted", "owner": "globex", "created_by": "globex", "id": 1},
        headers={API_KEY_HEADER: made["acme-ci"]},
    )
    document = problem(response, 422, "invalid_body")
    refused = sorted(error["loc"][0] for error in document["errors"])
    assert refused == ["created_by", "id", "owner"]
    assert {error["type"] for error in document["errors"]} == {"extra_forbidden"}
    assert stored_items(app) == []
    created = app.test_client().post(
        "/v1/items", json={"name": "mine"}, headers={API_KEY_HEADER: made["acme-ci"]}
    )
    assert created.json["owner"] == "acme"
    assert stored_items(app) == [("acme", "mine")]


def test_items_live_in_the_database_every_app_on_it_shares(make_app, key):
    """Two apps on one database, as two hosts are: what one writes, the other reads."""
    first, second = make_app(), make_app()
    headers = {API_KEY_HEADER: key}
    created = first.test_client().post("/v1/items", json={"name": "x"}, headers=headers).json
    assert second.test_client().get("/v1/items", headers=headers).json["items"] == [created]


def test_two_keys_of_one_owner_see_the_same_items(owners):
    app, made = owners
    client = app.test_client()
    created = client.post(
        "/v1/items", json={"name": "shared"}, headers={API_KEY_HEADER: made["acme-ci"]}
    ).json
    laptop = {API_KEY_HEADER: made["acme-laptop"]}
    assert list_items(client, made["acme-laptop"]).json["items"] == [created]
    assert client.get(f"/v1/items/{created['id']}", headers=laptop).json == created
    assert list_items(client, made["globex"]).json == {"items": [], "next_cursor": None}


def test_broken_object_level_authorisation_another_owners_item_is_answered_as_missing(owners):
    """Guessing ids tells another owner nothing: an item of acme is, to globex, exactly
    what an id no item has ever had is (OWASP API1, broken object-level authorisation)."""
    app, made = owners
    client = app.test_client()
    acme = {API_KEY_HEADER: made["acme-ci"]}
    globex = {API_KEY_HEADER: made["globex"]}
    secret = client.post("/v1/items", json={"name": "acme secret"}, headers=acme).json
    never_existed = secret["id"] + 1000

    others = client.get(f"/v1/items/{secret['id']}", headers=globex)
    missing = client.get(f"/v1/items/{never_existed}", headers=globex)

    assert client.get(f"/v1/items/{secret['id']}", headers=acme).status_code == 200
    assert others.status_code == missing.status_code == 404
    problem(others, 404, "not_found")
    assert others.get_data() == missing.get_data()

    def same_for_any_request(response):
        return sorted(
            (name, value) for name, value in response.headers if name not in PER_REQUEST_HEADERS
        )

    assert same_for_any_request(others) == same_for_any_request(missing)
    assert "acme" not in others.get_data(as_text=True)
    # Nor does a listing, whatever cursor is sent: a cursor is a place, not a permission.
    assert list_items(client, made["globex"]).json["items"] == []
    past_it = cursor_of(f"item:{never_existed}")
    assert list_items(client, made["globex"], cursor=past_it).json["items"] == []
    assert list_items(client, made["acme-ci"], cursor=past_it).json["items"] == [secret]


@pytest.mark.parametrize("item_id", ["0", "999999", str(2**63 - 1), str(2**63), "9" * 40])
def test_no_such_item_is_404_whatever_the_id(client, key, item_id):
    response = client.get(f"/v1/items/{item_id}", headers={API_KEY_HEADER: key})
    assert problem(response, 404, "not_found")["detail"] == "No such item."


def test_listing_needs_items_read_and_reading_one_too(app, client, issue_key):
    writer = issue_key(app, name="writer", owner="acme", scopes=frozenset({"items:write"}))
    created = client.post("/v1/items", json={"name": "x"}, headers={API_KEY_HEADER: writer})
    assert created.status_code == 201
    for path in ("/v1/items", f"/v1/items/{created.json['id']}"):
        response = client.get(path, headers={API_KEY_HEADER: writer})
        assert response.status_code == 403
        assert response.json["error"] == "insufficient_scope"


def test_walking_the_pages_gives_every_item_exactly_once(app, client, key):
    ids = add_items(app, "api-keys-1", 7)
    add_items(app, "someone-else", 3)
    pages = walk(client, key, limit=3)
    assert [len(page["items"]) for page in pages] == [3, 3, 1]
    assert [item["id"] for page in pages for item in page["items"]] == ids[::-1]


def test_an_exact_last_page_has_no_cursor(app, client, key):
    add_items(app, "api-keys-1", 4)
    pages = walk(client, key, limit=2)
    assert [len(page["items"]) for page in pages] == [2, 2]
    assert pages[-1]["next_cursor"] is None


def test_items_added_while_walking_are_not_repeated(app, client, key):
    ids = add_items(app, "api-keys-1", 5)
    first = list_items(client, key, limit=2).json
    add_items(app, "api-keys-1", 3)  # newer than the walk, so before its first page
    rest = walk(client, key, limit=2, cursor=first["next_cursor"])
    seen = [item["id"] for page in [first, *rest] for item in page["items"]]
    assert seen == ids[::-1]


def test_the_page_size_defaults_to_50_and_goes_up_to_100(app, client, key):
    add_items(app, "api-keys-1", MAX_PAGE_SIZE + 1)
    default = list_items(client, key).json
    largest = list_items(client, key, limit=MAX_PAGE_SIZE).json
    smallest = list_items(client, key, limit=1).json
    assert (PAGE_SIZE, MAX_PAGE_SIZE) == (50, 100)
    assert len(default["items"]) == PAGE_SIZE
    assert len(largest["items"]) == MAX_PAGE_SIZE
    assert largest["next_cursor"] is not None
    assert len(smallest["items"]) == 1


@pytest.mark.parametrize(
    "limit",
    ["0", "101", "-1", "", "1.5", "1e2", "0x10", "ten", "²", "٣", "9" * 40],
)
def test_resource_exhaustion_a_page_size_outside_1_to_100_is_refused(client, key, limit):
    response = list_items(client, key, limit=limit)
    problem(response, 422, "invalid_parameter")
    assert "limit" in response.json["message"]


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64!",
        cursor_of("item:abc"),
        cursor_of("user:5"),  # another kind of cursor
        cursor_of("item:-5"),
        cursor_of("item:"),
        cursor_of("item:\uff11\uff12"),  # digits, but not ASCII ones (fullwidth 12)
        cursor_of("item:" + "9" * 19),  # past any id a database holds
        cursor_of("item:" + "9" * 5000),
        "A" * 100_000,
        base64.urlsafe_b64encode(b"\xff\xfe\x00item:1").decode(),
        "é",
        "ключ",
        "\u2028",
        "\x00",
        "%00",
    ],
    ids=lambda cursor: repr(cursor[:20]),
)
def test_a_forged_or_huge_cursor_is_refused_never_a_500(app, client, key, logs, cursor):
    add_items(app, "api-keys-1", 3)
    response = list_items(client, key, cursor=cursor)
    problem(response, 422, "invalid_parameter")
    assert "cursor" in response.json["message"]
    assert "Traceback" not in logs.text


def test_a_damaged_cursor_is_refused_or_names_a_place_never_a_500(app, client, key, logs):
    add_items(app, "api-keys-1", 12)
    cursor = list_items(client, key, limit=5).json["next_cursor"]
    damaged = [
        cursor[:-1],
        cursor[:-2],
        cursor[1:],
        cursor[::-1],
        cursor + "A",
        cursor + "AAA",
        cursor.upper(),
        cursor.lower(),
        cursor.replace(cursor[-1], "/"),
        cursor + "=" * 5,
        cursor * 2,
    ]
    for each in damaged:
        response = list_items(client, key, cursor=each)
        assert response.status_code in (200, 422), (each, response.status_code)
        if response.status_code == 422:
            assert response.json["error"] == "invalid_parameter"
        else:  # still a place in this owner's list, holding only this owner's items
            assert all(item["owner"] == "api-keys-1" for item in response.json["items"])
    assert "Traceback" not in logs.text
