"""The tester's workload: an HTTP server that answers every request with 200 and who answered.

The charm pushes this file into the workload container and Pebble runs it with the image's
``python3`` (one process per port), so it must stay standard-library only and run on Python 3.10
or later. Every method on every path gets a 200 with a small JSON body naming the app, unit, port,
method and path that answered, which is what one wants to see when checking a mesh by hand.

Usage: ``python3 workload_server.py --port 8080`` with ``TESTER_APP`` and ``TESTER_UNIT`` in the
environment.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Request bodies are read and discarded so keep-alive connections stay in sync; this caps the read.
_MAX_BODY_BYTES = 1 << 20


class AnswerEverythingHandler(BaseHTTPRequestHandler):
    """Answer any method on any path with 200 and a JSON description of who answered."""

    protocol_version = "HTTP/1.1"
    server_version = "service-mesh-tester"
    app_name = ""
    unit_name = ""

    def __getattr__(self, name: str) -> Callable[[], None]:
        """Handle ``do_<METHOD>`` for every method, including ones the stdlib does not know."""
        if name.startswith("do_"):
            return self._answer
        raise AttributeError(name)

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(min(length, _MAX_BODY_BYTES))
        if length > _MAX_BODY_BYTES:
            self.close_connection = True
        body = json.dumps(
            {
                "app": self.app_name,
                "unit": self.unit_name,
                "port": self.connection.getsockname()[1],
                "method": self.command,
                "path": self.path,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def make_server(
    port: int, app_name: str, unit_name: str, host: str = "0.0.0.0"
) -> ThreadingHTTPServer:
    """Return a bound (not yet serving) server answering as ``app_name``/``unit_name``."""
    handler = type(
        "BoundHandler",
        (AnswerEverythingHandler,),
        {"app_name": app_name, "unit_name": unit_name},
    )
    return ThreadingHTTPServer((host, port), handler)


def main(argv: list[str] | None = None) -> None:
    """Serve on the port given on the command line until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = make_server(
        args.port, os.environ.get("TESTER_APP", ""), os.environ.get("TESTER_UNIT", "")
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
