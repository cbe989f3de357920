"""The reducer's HTTP/1.1 server: asyncio and h11 in front of the WSGI app, TLS from an ``ssl.SSLContext``.

Chosen by measuring issue 15's slowloris case: waitress has no TLS; cheroot reads bodies on its worker
threads, so slow bodies hold every thread; uvicorn times nothing before a first request and answers its
own errors in plain text. Here one event-loop thread holds every connection and reads each request
whole (head within ``read_timeout_s`` of its first byte; body into a temporary file, in memory up to
64 KiB, at ``min_body_rate`` or faster) before a worker thread runs the app: a slow or idle client holds
a socket, never a thread. Bounds: ``max_connections`` (503), ``idle_timeout_s`` between requests,
``body_limit(method, path, environ)`` checked on Content-Length before reading and while a chunked body arrives
(413), ``max_large_bodies`` bodies over ``large_body_bytes`` at once (503), a client that stops reading
an answer cut after ``read_timeout_s``. Every answer the server gives itself is JSON
(:mod:`reducer.http_errors`); ``environ[PEER_CERT]`` is the verified client certificate (mutual TLS).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import h11

from fedn.errors import FednError
from reducer.http_errors import HttpError, error_response
from reducer.http_wsgi import ASYNC_BODY, PEER_CERT, call_app, close_answer, pull_chunks, wsgi_environ

__all__ = ["PEER_CERT", "BodyLimit", "HttpLimits", "HttpServer"]

logger = logging.getLogger(__name__)

BodyLimit = Callable[[str, str, dict], int]  # may raise HttpError: refused from the head alone (401)
"""``(method, path) -> bytes``: the largest request body the server receives for a route."""

_READ_CHUNK = 1 << 16
_SPOOL_BYTES = 1 << 16  # a body past this goes to a temporary file, not memory
_LINGER_BYTES = 8 << 20  # after refusing a request, read and drop this much of what is still coming
_LINGER_S = 2.0  # so the client reads our answer instead of a reset


@dataclass(frozen=True)
class HttpLimits:
    """What one client may hold of the server (see the module docstring)."""

    max_connections: int = 1000
    idle_timeout_s: float = 30.0
    read_timeout_s: float = 30.0
    min_body_rate: int = 16 << 10
    max_header_bytes: int = 16 << 10
    large_body_bytes: int = 1 << 20
    max_large_bodies: int = 4


class HttpServer:
    """Serves ``app`` on ``host:port`` (0 picks a free port) until :meth:`stop`."""

    def __init__(
        self,
        app: Callable[..., Any],
        host: str,
        port: int,
        *,
        threads: int = 16,
        limits: HttpLimits | None = None,
        body_limit: BodyLimit | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.threads = threads
        self.limits = limits or HttpLimits()
        self.body_limit: BodyLimit = body_limit or (lambda method, path, environ: self.limits.large_body_bytes)
        self.ssl_context = ssl_context
        self.pool: ThreadPoolExecutor | None = None
        self.large_bodies = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._serving = 0

    def start(self) -> None:
        """Bind (errors surface here, in the caller's thread) and serve from a thread of its own."""
        try:
            sock = socket.create_server((self.host, self.port), backlog=1024)
        except OSError as exc:
            raise FednError(f"cannot bind {self.host}:{self.port}: {exc.strerror or exc}") from None
        self.port = sock.getsockname()[1]
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="fedn-http")
        self._loop = asyncio.new_event_loop()
        ready: Future = Future()
        self._thread = threading.Thread(target=self._run, args=(sock, ready), name="fedn-http-loop", daemon=True)
        self._thread.start()
        try:
            ready.result(30)
        except BaseException:
            self.stop()
            raise

    def _run(self, sock: socket.socket, ready: Future) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(
                    self._accept,
                    sock=sock,
                    ssl=self.ssl_context,
                    ssl_handshake_timeout=self.limits.read_timeout_s if self.ssl_context else None,
                    limit=_READ_CHUNK,
                )
            )
        except BaseException as exc:
            sock.close()
            ready.set_exception(exc)
            return
        ready.set_result(None)
        loop.run_forever()

    def stop(self) -> None:
        """Stop accepting, end every connection, wait for the app calls in flight (bounded)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._thread is not None and self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(15)
            except Exception:  # a stuck connection must not keep the process from stopping
                logger.warning("HTTP server: connections did not close in time", exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(15)
        if not loop.is_running():
            loop.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        server = self._server
        if server is not None:  # stop accepting first: Python 3.11 drops, unclosed, a connection it
            for sock in server.sockets:  # accepted in the turn in which the server was closed
                loop.remove_reader(sock.fileno())
        for _ in range(3):  # an accepted connection is set up in a task, which then starts its handler's
            await asyncio.sleep(0)
            setting_up = asyncio.all_tasks() - {asyncio.current_task()} - self._tasks
            if setting_up:
                await asyncio.wait(setting_up, timeout=1.0)
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _ in range(3):  # closing a transport finishes in callbacks the loop must still run
            await asyncio.sleep(0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = _Connection(self, reader, writer)
        try:
            if self._serving >= self.limits.max_connections:
                detail = f"the server holds its limit of {self.limits.max_connections} connections; retry later"
                await connection.refuse(HttpError(503, detail, (("Retry-After", "1"),)))
                return
            self._serving += 1
            connection.counted = True
            await connection.serve()
        except asyncio.CancelledError:
            pass  # the server is stopping
        except Exception:
            logger.exception("HTTP connection from %s failed", writer.get_extra_info("peername"))
        finally:
            self._tasks.discard(task)
            self._serving -= connection.counted
            connection.release_large_body()
            if connection.aborted:
                writer.transport.abort()
            else:
                writer.close()


class _Connection:
    """One client connection: requests in turn, each read whole, then answered by the app."""

    def __init__(self, server: HttpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.limits = server.limits
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        self.loop = asyncio.get_running_loop()
        self.aborted = False
        self.counted = False
        self.large_body = False

    async def serve(self) -> None:
        while True:
            try:
                request = await self._read_head()
                if request is None:
                    return
                environ = wsgi_environ(
                    request,
                    server=(self.server.host, self.server.port, "https" if self.server.ssl_context else "http"),
                    peer=self.writer.get_extra_info("peername"),
                    ssl_object=self.writer.get_extra_info("ssl_object"),
                )
                body = await self._read_body(environ)
            except HttpError as exc:
                await self.refuse(exc)
                return
            if body is None:
                return
            try:
                done = await self._respond(environ)
            finally:
                body.close()
                self.release_large_body()
            if not done or self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return
            self.h11.start_next_cycle()

    def _event(self) -> Any:
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpError(exc.error_status_hint, f"malformed HTTP request: {exc}") from None

    async def _receive(self, timeout: float) -> bool:
        """Feed h11 what arrives within ``timeout`` (EOF included); False if nothing did."""
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                data = await self.reader.read(_READ_CHUNK)
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError):
            data = b""
        self.h11.receive_data(data)
        return True

    async def _read_head(self) -> h11.Request | None:
        """The next request's head; None when the client closed or stayed idle past ``idle_timeout_s``."""
        deadline: float | None = None
        while True:
            event = self._event()
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:  # ConnectionClosed
                return None
            now = self.loop.time()
            if deadline is None and self.h11.trailing_data[0]:
                deadline = now + self.limits.read_timeout_s
            wait = self.limits.idle_timeout_s if deadline is None else deadline - now
            if not await self._receive(wait):
                if deadline is None:
                    return None
                raise HttpError(408, f"the request head did not arrive within {self.limits.read_timeout_s:g} s")
            deadline = self.loop.time() + self.limits.read_timeout_s if deadline is None else deadline

    async def _read_body(self, environ: dict) -> Any:
        """The body in a temporary file set as ``wsgi.input``; None if the client went away."""
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        limit = self.server.body_limit(method, path, environ)
        declared = int(environ["CONTENT_LENGTH"]) if environ.get("CONTENT_LENGTH") else None
        too_large = f"a request body on {method} {path[:200]} is at most {limit} bytes"
        if declared is not None and declared > limit:
            raise HttpError(413, f"{too_large}; this one has {declared}")
        if (declared or 0) > self.limits.large_body_bytes:
            self._take_large_body()
        if self.h11.they_are_waiting_for_100_continue:
            self.writer.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 (closed by serve())
        received, started = 0, self.loop.time()
        rate, timeout = self.limits.min_body_rate, self.limits.read_timeout_s
        try:
            while True:
                event = self._event()
                if isinstance(event, h11.Data):
                    received += len(event.data)
                    if received > limit:
                        raise HttpError(413, too_large)
                    if received > self.limits.large_body_bytes:
                        self._take_large_body()
                    body.write(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif event is h11.NEED_DATA:
                    elapsed = self.loop.time() - started
                    if elapsed > timeout and received < rate * elapsed:
                        raise HttpError(408, f"the request body arrived slower than {rate} bytes/s")
                    if not await self._receive(timeout):
                        raise HttpError(408, f"no byte of the request body arrived for {timeout:g} s")
                else:  # ConnectionClosed
                    body.close()
                    return None
        except BaseException:
            body.close()
            raise
        body.seek(0)
        environ["CONTENT_LENGTH"] = str(received)
        environ["wsgi.input"] = body
        return body

    def _take_large_body(self) -> None:
        if self.large_body:
            return
        if self.server.large_bodies >= self.limits.max_large_bodies:
            detail = f"the server is receiving {self.limits.max_large_bodies} large bodies already; retry later"
            raise HttpError(503, detail, (("Retry-After", "5"),))
        self.server.large_bodies += 1
        self.large_body = True

    def release_large_body(self) -> None:
        if self.large_body:
            self.large_body = False
            self.server.large_bodies -= 1

    async def _respond(self, environ: dict) -> bool:
        """Run the app on a worker thread and stream its answer; False if the connection cannot go on."""
        pool = self.server.pool
        try:
            status, headers, first, iterator, result = await self.loop.run_in_executor(
                pool, call_app, self.server.app, environ
            )
        except Exception:
            logger.exception("%s %s failed in the WSGI app", environ["REQUEST_METHOD"], environ["PATH_INFO"][:200])
            await self.refuse(HttpError(500, "unexpected error in the HTTP server; see the reducer log"))
            return False
        send_body = environ["REQUEST_METHOD"] != "HEAD"
        stream = environ.get(ASYNC_BODY) if send_body else None  # sent from this loop: no thread held
        try:
            code, _, reason = status.partition(" ")
            head = h11.Response(
                status_code=int(code),
                reason=reason.encode("latin-1"),
                headers=[(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers],
            )
            out = [self.h11.send(head), *(self.h11.send(h11.Data(data=c)) for c in first if send_body)]
            if iterator is not None or stream is not None:  # chunk by chunk; a small answer in one write
                self.writer.writelines(out)
                await self._drain()
                chunks = stream if stream is not None else pull_chunks(self.loop, pool, iterator)
                async for chunk in chunks:
                    if chunk and send_body:
                        self.writer.write(self.h11.send(h11.Data(data=chunk)))
                        await self._drain()
                out = []
            self.writer.writelines([*out, self.h11.send(h11.EndOfMessage())])
            await self._drain()
            return True
        except h11.LocalProtocolError as exc:
            logger.error("%s %s: the app's answer is not valid HTTP: %s", environ["REQUEST_METHOD"], status, exc)
            if self.h11.our_state is h11.SEND_RESPONSE:
                await self.refuse(HttpError(500, "the server produced an invalid answer; see the reducer log"))
            else:
                self.aborted = True
            return False
        except (TimeoutError, ConnectionError, ssl.SSLError):
            self.aborted = True  # the client stopped reading, or went away
            return False
        except Exception as exc:  # the app failed mid-answer (a blob that fails its checksum): cut it short
            log = logger.warning if isinstance(exc, FednError) else logger.exception
            log("%s %s: answer cut short: %s", environ["REQUEST_METHOD"], environ["PATH_INFO"][:200], exc)
            self.aborted = True
            return False
        finally:
            await close_answer(self.loop, pool, result, environ)

    async def _drain(self) -> None:
        async with asyncio.timeout(self.limits.read_timeout_s):
            await self.writer.drain()

    async def refuse(self, exc: HttpError) -> None:
        """Answer ``exc`` in JSON and end the connection, reading on briefly so the client sees the answer."""
        if self.writer.transport.is_closing():
            return
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):  # an answer is under way: cut it
            self.aborted = True
            return
        self.writer.write(error_response(exc))
        try:
            await self._drain()
            end = self.loop.time() + _LINGER_S
            dropped = 0
            while dropped < _LINGER_BYTES and (left := end - self.loop.time()) > 0:
                data = await asyncio.wait_for(self.reader.read(_READ_CHUNK), left)
                if not data:
                    break
                dropped += len(data)
        except (TimeoutError, ConnectionError, ssl.SSLError):
            pass
