"""
The HTTP server: moto's server with the callback side, on a thread, keeping connections alive.

:class:`EmulatorServer` checks the installed moto (:func:`~._moto.check_moto`), then serves
:class:`~._app.EmulatorApp` with werkzeug's threaded server on a background thread. Its
request handler (:class:`KeepAliveRequestHandler`) keeps connections alive (HTTP/1.1) for plain
requests; werkzeug's development server would close each one.

Only :mod:`.emulator` imports this module, lazily, when a server is started.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from typing import Any, Final

from moto.moto_server.werkzeug_app import MotoRequestHandler
from werkzeug.serving import BaseWSGIServer, make_server

from ._app import EmulatorApp
from ._engine import StepEngine
from ._moto import check_moto
from ._sqs import send_to_queue

__all__ = ["EmulatorServer", "KeepAliveRequestHandler"]

#: Response headers the keep-alive handler sets itself (hop-by-hop, or the body's length).
_HOP_HEADERS: Final = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


class KeepAliveRequestHandler(MotoRequestHandler):
    """
    moto's request handler, keeping connections alive and without a log line per request.

    werkzeug's development server closes the connection after every response, so every request
    costs a new connection and a new thread, and under load each new thread waits for the GIL
    before the server accepts the next connection. Here a plain HTTP/1.1 request (a body of
    known length, no ``Expect``, not ``HEAD``) is answered with the whole response and a
    ``Content-Length`` and the connection stays open for the client's next request; anything
    else goes through werkzeug unchanged (and closes).
    """

    protocol_version = "HTTP/1.1"
    # Small responses on a kept-alive connection: without this, delayed ACKs can add 40 ms.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        connections = getattr(self.server, "emulator_connections", None)
        if connections is not None:
            connections.add(self.connection)

    def finish(self) -> None:
        connections = getattr(self.server, "emulator_connections", None)
        if connections is not None:
            connections.discard(self.connection)
        super().finish()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None

    def _can_keep_alive(self) -> bool:
        return (
            self.request_version == "HTTP/1.1"
            and self.command != "HEAD"
            and not self.headers.get("Expect")
            and "chunked" not in self.headers.get("Transfer-Encoding", "").lower()
        )

    def run_wsgi(self) -> None:
        if not self._can_keep_alive():
            self.close_connection = True
            super().run_wsgi()
            return
        environ = self.make_environ()
        self.environ = environ
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        # Read exactly the body, so that the next request on this connection starts clean.
        environ["wsgi.input"] = io.BytesIO(self.rfile.read(length) if length > 0 else b"")
        response: dict[str, Any] = {}
        written: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            response["status"], response["headers"] = status, headers
            return written.append

        try:
            result = self.server.app(environ, start_response)
            try:
                body = b"".join([*written, *result])
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            code_text, _, reason = str(response["status"]).partition(" ")
            code = int(code_text)
        except Exception as err:
            self.close_connection = True
            self.server.log("error", f"Error on request {self.command} {self.path}: {err!r}")
            code, reason, body = 500, "Internal Server Error", b"Internal Server Error"
            response["headers"] = [("Content-Type", "text/plain")]
        headers: list[tuple[str, str]] = response["headers"]
        names = {key.lower() for key, _ in headers}
        lines = [f"{self.protocol_version} {code} {reason}"]
        # The app's own Server header (moto's) stands; one of each, or strict clients refuse it.
        if "server" not in names:
            lines.append(f"Server: {self.version_string()}")
        if "date" not in names:
            lines.append(f"Date: {self.date_time_string()}")
        lines.extend(f"{key}: {value}" for key, value in headers if key.lower() not in _HOP_HEADERS)
        no_body = code in (204, 304) or 100 <= code < 200
        if not no_body:
            lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        head = "".join(f"{line}\r\n" for line in lines).encode("latin-1", "strict") + b"\r\n"
        # Headers and body in one write: one system call (one release of the GIL) a response.
        self.wfile.write(head + (b"" if no_body else body))
        self.wfile.flush()


class EmulatorServer:
    """
    The threaded HTTP server running :class:`EmulatorApp` on a background thread.

    :param host: address to bind.
    :param port: port to bind; ``0`` picks a free one.
    :param region: the emulator's default region.
    :param engine: the step engine (a fresh one putting messages on moto's SQS when omitted).
    """

    def __init__(self, host: str, port: int, region: str, engine: StepEngine | None = None) -> None:
        # A moto that changed what the emulator relies on fails here, naming what changed.
        check_moto()
        self.engine = engine or StepEngine(send_to_queue)
        self.app = EmulatorApp(self.engine, region)
        self._server: BaseWSGIServer = make_server(
            host, port, self.app, threaded=True, request_handler=KeepAliveRequestHandler
        )
        # Connections kept alive; closed on stop so that no client is served by a stopped server.
        self._server.emulator_connections = set()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"callback-emulator-{self.port}",
            daemon=True,
        )

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve on the background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close the socket and cancel the engine's timers."""
        self.engine.shutdown()
        self._server.shutdown()
        self._server.server_close()
        for connection in list(self._server.emulator_connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
