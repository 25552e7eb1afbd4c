"""The peer: the common blog pattern, an API-key decorator with Flask-Limiter per key.

Served by gunicorn with the generated project's gunicorn.conf.py. Settings:
``API_KEYS`` (comma-separated raw keys, as the blog keeps them), ``RATELIMIT_LIMIT``
and ``RATELIMIT_STORAGE_URI``.
"""

import hashlib
import os
from functools import wraps

from flask import Flask, abort, request
from flask_limiter import Limiter

API_KEYS = {key for key in os.environ.get("API_KEYS", "").split(",") if key}


def key_hash() -> str:
    """Count each client per key, by the key's hash (never the raw key in storage)."""
    return hashlib.sha256(request.headers.get("x-api-key", "").encode()).hexdigest()


app = Flask(__name__)
limiter = Limiter(
    key_hash,
    app=app,
    storage_uri=os.environ["RATELIMIT_STORAGE_URI"],
    strategy="fixed-window",
    headers_enabled=True,
)


def require_api_key(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        if request.headers.get("x-api-key") not in API_KEYS:
            abort(401)
        return view(*args, **kwargs)

    return wrapper


@app.get("/v1/secure-data")
@require_api_key
@limiter.limit(os.environ["RATELIMIT_LIMIT"])
def secure_data():
    return {"data": {"message": "Hello from a protected route.", "key": "peer"}}
