"""gunicorn settings for production, read when gunicorn starts from the project root:

    gunicorn '{{ cookiecutter.package_name }}:create_app()'

Command-line flags and GUNICORN_CMD_ARGS override anything here.
"""

import os

from {{ cookiecutter.package_name }}.workers import TimedHandshakeSocket

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads, so that a few clients sending their requests slowly, or never finishing
# them, hold a thread each while the others answer /health and everyone else
# (slowloris). The worker (workers.py) times each request's head and body reads
# out, and keeps request text, keys included, out of gunicorn's error pages.
worker_class = "{{ cookiecutter.package_name }}.workers.ThreadWorker"
threads = 8
timeout = 30
graceful_timeout = 30
keepalive = 5

# Build the app once, in the master, before forking the workers: a bad setting or a
# broken key registry stops the server at start-up with one error, and a worker
# restarted later cannot fail to boot on a file that broke meanwhile.
preload_app = True

# Trust no X-Forwarded-* header here: the app's TRUSTED_PROXIES setting is the
# only place that decides how many proxy hops to believe (scheme and IP spoofing).
forwarded_allow_ips = ""

# The app logs one line per request itself, without query strings; gunicorn's
# own access log would repeat each request and could print secrets from URLs.
accesslog = None
errorlog = "-"

# No control socket: several servers on one host would fight over the default one.
control_socket_disable = True


def ssl_context(conf, default_ssl_context_factory):
    """gunicorn's TLS set-up (--certfile), with each handshake timed out (slowloris)."""
    context = default_ssl_context_factory()
    context.sslsocket_class = TimedHandshakeSocket
    return context
{%- if cookiecutter.use_rate_limiting %}


def when_ready(server):
    """Warn when rate limits would be counted by each worker on its own."""
    storage = os.environ.get("RATELIMIT_STORAGE_URI", "").strip() or "memory://"
    if server.cfg.workers > 1 and storage.startswith("memory"):
        server.log.warning(
            "RATELIMIT_STORAGE_URI is %s with %d workers: each worker counts separately, "
            "so a key gets up to %d times its limit; use redis:// to share the counts",
            storage,
            server.cfg.workers,
            server.cfg.workers,
        )
{%- endif %}
