"""The example routes (api.py): health, secure data and items."""

from {{ cookiecutter.package_name }}.api import MAX_ITEMS, MAX_NAME_LENGTH
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER


def test_health_needs_no_key(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_secure_data(client, key):
    response = client.get("/v1/secure-data", headers={API_KEY_HEADER: key})
    assert response.status_code == 200
    assert "data" in response.json


def test_create_and_list_items(app, client, key):
    headers = {API_KEY_HEADER: key}
    assert client.get("/v1/items", headers=headers).json == {"items": []}
    created = client.post("/v1/items", json={"name": "  first  "}, headers=headers)
    longest = client.post("/v1/items", json={"name": "é" * MAX_NAME_LENGTH}, headers=headers)
    assert created.status_code == 201
    assert created.json == {"id": 1, "name": "first", "created_by": "api-keys-1"}
    assert longest.status_code == 201
    assert longest.json["id"] == 2
    assert client.get("/v1/items", headers=headers).json["items"] == [created.json, longest.json]


def test_resource_exhaustion_item_store_keeps_only_the_newest(app):
    store = app.extensions["items"]
    for number in range(MAX_ITEMS + 5):
        store.add(f"item {number}", created_by="test")
    items = store.all()
    assert len(items) == MAX_ITEMS
    assert items[-1]["name"] == f"item {MAX_ITEMS + 4}"
    assert items[0]["id"] == 6


def test_each_app_has_its_own_items(make_app, key):
    first, second = make_app(), make_app()
    first.test_client().post("/v1/items", json={"name": "x"}, headers={API_KEY_HEADER: key})
    assert len(first.extensions["items"].all()) == 1
    assert second.extensions["items"].all() == []
