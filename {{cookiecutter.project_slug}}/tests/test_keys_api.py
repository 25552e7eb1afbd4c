"""Keys over HTTP (keys_api.py): /v1/keys for keys with the keys:admin scope."""

import json

import pytest
from problems import problem

from {{ cookiecutter.package_name }} import keys
from {{ cookiecutter.package_name }}.config import API_KEY_HEADER


@pytest.fixture
def admin(app, registry_key):
    """A registry key with only the keys:admin scope, and its headers."""
    admin_key, _ = registry_key("provisioner", scopes=["keys:admin"])
    app.extensions["api_keys"].refresh()
    return {API_KEY_HEADER: admin_key}


def refreshed(app):
    """The app's key store after it has read the registry (servers do it each second)."""
    app.extensions["api_keys"].refresh()
    return app


def test_a_created_key_is_shown_once_and_works(app, client, admin):
    created = client.post(
        "/v1/keys",
        json={"name": "acme-ci", "owner": "acme", "scopes": ["items:read"], "expires_in": "90d"},
        headers=admin,
    )
    assert created.status_code == 201
    new_key = created.json["key"]
    assert keys.is_well_formed(new_key)
    assert created.json["fingerprint"] == keys.fingerprint(new_key)
    assert (created.json["owner"], created.json["scopes"]) == ("acme", ["items:read"])
    assert created.json["status"] == "active" and created.json["expires"]
    refreshed(app)
    whoami = client.get("/v1/whoami", headers={API_KEY_HEADER: new_key}).json
    assert (whoami["name"], whoami["owner"]) == ("acme-ci", "acme")
    # Never again: not in the record, the list, or anywhere else.
    shown = client.get("/v1/keys/acme-ci", headers=admin)
    listed = client.get("/v1/keys", headers=admin)
    for answer in (shown, listed):
        assert answer.status_code == 200
        assert new_key not in answer.get_data(as_text=True)
        assert "sha256" not in answer.get_data(as_text=True)
    assert "key" not in shown.json


def test_credential_leak_no_key_or_hash_in_any_answer_or_log(app, client, admin, logs):
    logs.attach()  # the registry_key fixture's own app set logging up anew
    created = client.post("/v1/keys", json={"name": "leaky"}, headers=admin).json["key"]
    rotated = client.post("/v1/keys/leaky/rotate", json={"grace": "1h"}, headers=admin).json["key"]
    answers = [
        client.get("/v1/keys", headers=admin),
        client.get("/v1/keys/leaky", headers=admin),
        client.get(f"/v1/keys/{created}", headers=admin),  # a key pasted into the URL
        client.delete("/v1/keys/leaky", headers=admin),
    ]
    text = "".join(answer.get_data(as_text=True) for answer in answers) + logs.text
    for secret in (created, rotated, keys.hash_key(created), keys.hash_key(rotated)):
        assert secret not in text
    assert answers[2].status_code == 404
    assert "keys create: name=leaky" in logs.text  # the log was captured


def test_privilege_escalation_only_keys_admin_or_star_manage_keys(app, client, key, issue_key):
    reader = issue_key(app, scopes=frozenset({"items:read", "items:write"}))
    refused = client.post("/v1/keys", json={"name": "mine"}, headers={API_KEY_HEADER: reader})
    assert problem(refused, 403, "insufficient_scope")["required_scopes"] == ["keys:admin"]
    for method, path in (("GET", "/v1/keys"), ("GET", "/v1/keys/x"), ("DELETE", "/v1/keys/x")):
        answer = client.open(path, method=method, headers={API_KEY_HEADER: reader})
        problem(answer, 403, "insufficient_scope")
    # The API_KEYS key has '*', every scope.
    assert (
        client.post("/v1/keys", json={"name": "mine"}, headers={API_KEY_HEADER: key}).status_code
        == 201
    )


def test_a_taken_name_is_a_conflict(client, admin):
    assert client.post("/v1/keys", json={"name": "twice"}, headers=admin).status_code == 201
    again = client.post("/v1/keys", json={"name": "twice"}, headers=admin)
    assert "already exists" in problem(again, 409, "conflict")["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/keys/nobody"),
        ("DELETE", "/v1/keys/nobody"),
        ("POST", "/v1/keys/nobody/rotate"),
        ("GET", "/v1/keys/bad%20name"),
    ],
)
def test_an_unknown_name_is_not_found(client, admin, method, path):
    answer = client.open(path, method=method, headers=admin, json={} if method == "POST" else None)
    assert problem(answer, 404, "not_found")["detail"] == "No such key."


@pytest.mark.parametrize(
    ("body", "field", "cli_args"),
    [
        ({"name": "bad name"}, "name", ["bad name"]),
        ({"name": "ok", "owner": "-x"}, "owner", ["ok", "--owner", "-x"]),
        ({"name": "ok", "scopes": ["no spaces"]}, "scopes", ["ok", "--scope", "no spaces"]),
        (
            {"name": "ok", "allow_ips": ["10.0.0.0/33"]},
            "allow_ips",
            ["ok", "--allow-ip", "10.0.0.0/33"],
        ),
        ({"name": "ok", "expires_in": "90y"}, "expires_in", ["ok", "--expires-in", "90y"]),
{%- if cookiecutter.use_rate_limiting %}
        ({"name": "ok", "rate_limit": "lots"}, "rate_limit", ["ok", "--rate-limit", "lots"]),
{%- endif %}
    ],
)
def test_bad_values_get_the_same_errors_as_the_cli(client, admin, keys_cli, body, field, cli_args):
    answer = client.post("/v1/keys", json=body, headers=admin)
    document = problem(answer, 422, "invalid_body")
    assert [error["loc"][0] for error in document["errors"]] == [field]
    result = keys_cli("create", *cli_args)
    assert result.exit_code != 0
    # The registry's own words, whichever way the key was asked for.
    message = document["errors"][0]["msg"].removeprefix("Value error, ")
    assert message in result.stderr


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "x", "key": "chosen"},
        {"name": "x", "digest": "sha256:" + "0" * 64},
        {"name": 5},
        [],
    ],
)
def test_mass_assignment_a_body_cannot_choose_the_key_or_its_hash(client, admin, body):
    problem(client.post("/v1/keys", json=body, headers=admin), 422, "invalid_body")


def test_rotation_gives_a_new_key_and_the_old_one_answers_as_name_during_grace(app, client, admin):
    old = client.post("/v1/keys", json={"name": "svc", "owner": "acme"}, headers=admin).json["key"]
    rotated = client.post("/v1/keys/svc/rotate", json={"grace": "1h"}, headers=admin)
    assert rotated.status_code == 201
    new = rotated.json["key"]
    assert new != old and rotated.json["owner"] == "acme"
    refreshed(app)
    for each in (old, new):
        assert client.get("/v1/whoami", headers={API_KEY_HEADER: each}).json["name"] == "svc"
    again = client.post("/v1/keys/svc/rotate", json={"grace": "0"}, headers=admin).json["key"]
    refreshed(app)
    assert client.get("/v1/whoami", headers={API_KEY_HEADER: new}).status_code == 401
    assert client.get("/v1/whoami", headers={API_KEY_HEADER: again}).status_code == 200


def test_delete_revokes_at_once(app, client, admin):
    doomed = client.post("/v1/keys", json={"name": "doomed"}, headers=admin).json["key"]
    refreshed(app)
    assert client.get("/v1/whoami", headers={API_KEY_HEADER: doomed}).status_code == 200
    deleted = client.delete("/v1/keys/doomed", headers=admin)
    assert (deleted.status_code, deleted.get_data()) == (204, b"")
    refreshed(app)
    problem(client.get("/v1/whoami", headers={API_KEY_HEADER: doomed}), 401, "invalid_api_key")
    assert client.get("/v1/keys/doomed", headers=admin).json["status"] == "revoked"


def test_the_list_comes_a_page_at_a_time_newest_first(client, admin):
    for n in range(5):
        client.post("/v1/keys", json={"name": f"k{n}"}, headers=admin)
    first = client.get("/v1/keys?limit=2", headers=admin).json
    names = [entry["name"] for entry in first["keys"]]
    cursor, pages = first["next_cursor"], [names]
    while cursor:
        page = client.get(f"/v1/keys?limit=2&cursor={cursor}", headers=admin).json
        pages.append([entry["name"] for entry in page["keys"]])
        cursor = page["next_cursor"]
    seen = [name for page in pages for name in page]
    assert seen[:5] == ["k4", "k3", "k2", "k1", "k0"]
    assert "provisioner" in seen and len(seen) == len(set(seen))
    forged = client.get("/v1/keys?cursor=aXRlbTox", headers=admin)  # an items cursor
    problem(forged, 422, "invalid_parameter")


def test_repudiation_every_change_is_audited_with_the_acting_key(client, admin, logs):
    logs.attach()  # the registry_key fixture's own app set logging up anew
    client.post("/v1/keys", json={"name": "audited"}, headers=admin)
    client.post("/v1/keys/audited/rotate", json={}, headers=admin)
    client.delete("/v1/keys/audited", headers=admin)
    admin_fingerprint = keys.fingerprint(admin[API_KEY_HEADER])
    audited = [line for line in logs.lines if "keys " in line and "by=key:provisioner" in line]
    assert [line.split("keys ")[1].split(":")[0] for line in audited] == [
        "create",
        "rotate",
        "revoke",
    ]
    assert all(f"({admin_fingerprint})" in line for line in audited)


def test_keys_over_http_are_in_the_document_with_their_scope(client):
    document = client.get("/openapi.json").json
    operations = [
        document["paths"]["/v1/keys"]["post"],
        document["paths"]["/v1/keys"]["get"],
        document["paths"]["/v1/keys/{name}"]["get"],
        document["paths"]["/v1/keys/{name}"]["delete"],
        document["paths"]["/v1/keys/{name}/rotate"]["post"],
    ]
    assert all(op["security"] == [{"ApiKey": ["keys:admin"]}] for op in operations)
    assert "409" in operations[0]["responses"] and "204" in operations[3]["responses"]
    issued = document["components"]["schemas"]["IssuedKey"]["properties"]
    listed = json.dumps(document["components"]["schemas"]["KeyOut"])
    assert "key" in issued and '"key"' not in listed and "digest" not in listed
