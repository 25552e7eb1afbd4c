"""One check for every error answer: an RFC 9457 problem document in the API's shape."""

PROBLEM_JSON = "application/problem+json"
MEMBERS = {"type", "title", "status", "detail", "error", "message"}


def problem(response, status: int, code: str) -> dict:
    """The problem document of ``response``, after checking it is exactly ``code`` with
    ``status``: every member present, ``detail`` and ``message`` the same text, ``type``
    the stable URI of the code. Returns it for the caller's own checks."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM_JSON
    document = response.get_json(force=True)
    assert set(document) >= MEMBERS, document
    assert (document["status"], document["error"]) == (status, code)
    assert document["detail"] == document["message"] and document["message"]
    assert document["title"]
    if "://" not in document["type"]:  # else a registered type (RFC 9457) stands for ours
        assert document["type"] == f"/problems/{code}"
    return document
