"""The gunicorn worker this project runs: gunicorn's threaded worker, hardened.

gunicorn.conf.py names it (``worker_class``, and ``ssl_context`` when gunicorn
terminates TLS). It closes three gaps of gunicorn's own gthread worker:

- Slow clients (slowloris): a thread reads a request until it is complete, with
  no time limit, so a few clients that send half a request and wait hold every
  thread. Here a request's head (request line and headers) must arrive within
  REQUEST_HEAD_TIMEOUT, a TLS handshake too, and a body may pause for
  READ_TIMEOUT at most.
- Error pages that quote the request (credential leak): gunicorn answers a
  malformed request line or header with a 400 page, and a WARNING, that repeat
  the offending text, a key included. Here they say what was wrong, not what
  was sent.
- Two answers to one request (response desync): once a request is answered,
  gthread reads the rest of a body the app left unread, and answers again if
  that proves malformed. Here the connection just closes.

It builds on internals of gunicorn 27.0.1 (pinned in pyproject.toml): read them
again when you upgrade gunicorn.
"""

from __future__ import annotations

import errno
import ssl
import time

from gunicorn.http.errors import NoMoreData, ParseException
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers import gthread

# Each slow request holds one thread for this long at most (slowloris).
REQUEST_HEAD_TIMEOUT = 10.0
READ_TIMEOUT = 10.0
# What a 400 page and its log line show in place of the request's text.
NOT_SHOWN = "(not shown)"


class TimedReader(SocketUnreader):
    """gunicorn's socket reader, with the time limits above.

    A read that runs out of time ends the stream for good: the request is cut
    short, the connection closes after the answer, and nothing the client sends
    later can be read as a request of its own (request smuggling).
    """

    def __init__(self, sock, buffered: bytes) -> None:
        super().__init__(sock)
        self.unread(buffered)
        self.head_deadline: float | None = None
        self.timed_out = False

    def chunk(self, size_hint=None) -> bytes:
        if self.timed_out:
            return b""
        timeout = READ_TIMEOUT
        if self.head_deadline is not None:
            timeout = min(timeout, self.head_deadline - time.monotonic())
        previous = self.sock.gettimeout()  # gunicorn bounds a few reads itself
        if previous is not None:
            timeout = min(timeout, previous)
        try:
            if timeout <= 0:
                raise TimeoutError
            self.sock.settimeout(timeout)
            return super().chunk(size_hint)
        except TimeoutError:
            self.timed_out = True
            return b""
        finally:
            self.sock.settimeout(previous)


class TimedHandshakeSocket(ssl.SSLSocket):
    """A TLS connection whose handshake must end within REQUEST_HEAD_TIMEOUT.

    gunicorn.conf.py's ssl_context hook hands it to gunicorn, for when gunicorn
    terminates TLS itself: a client could otherwise leave a handshake half done
    and hold a thread for ever.
    """

    def do_handshake(self, block=False) -> None:
        previous = self.gettimeout()
        self.settimeout(REQUEST_HEAD_TIMEOUT)
        try:
            super().do_handshake(block)
        finally:
            self.settimeout(previous)


class TimedConnection(gthread.TConn):
    """A client connection whose request heads are timed."""

    def init(self) -> None:
        # gthread calls this before each request; the first call does the TLS handshake.
        try:
            super().init()
        except TimeoutError:  # a handshake left unfinished
            raise NoMoreData() from None  # gunicorn closes the connection quietly
        if self.is_http2:
            return
        reader = self.parser.unreader
        if not isinstance(reader, TimedReader):
            reader = self.parser.unreader = TimedReader(self.sock, reader.take_buffered())
        reader.head_deadline = time.monotonic() + REQUEST_HEAD_TIMEOUT


class ThreadWorker(gthread.ThreadWorker):
    """gthread with timed connections, error pages that quote nothing, one answer
    per request."""

    def accept(self, listener) -> None:
        """gthread's accept, with a TimedConnection."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        client_sock.setblocking(True)
        self.enqueue_req(
            TimedConnection(self.cfg, client_sock, client_addr, listener.getsockname())
        )

    def handle_request(self, req, conn):
        # The head is in: from here on, only a pause in the body is timed.
        conn.parser.unreader.head_deadline = None
        keepalive = super().handle_request(req, conn)
        req.answered = True
        return keepalive

    def handle_error(self, req, client, addr, exc) -> None:
        """gunicorn's answer to a malformed request, without the request's text."""
        if getattr(req, "answered", False):
            # A second answer would pass for the answer to the client's next request.
            return
        if isinstance(exc, ParseException):
            for name, value in vars(exc).items():
                if isinstance(value, str | bytes | bytearray):
                    setattr(exc, name, NOT_SHOWN)
        super().handle_error(req, client, addr, exc)
