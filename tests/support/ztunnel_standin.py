r"""A stand-in for what ztunnel and the pod network do for a request, as plain byte relays.

In an ambient mesh, a captured pod's connection to a Service is taken by the node's ztunnel,
which carries it to the waypoint in mutual TLS under the pod's own identity (its SPIFFE
certificate); the waypoint then opens a connection to one of the Service's pods. Neither ztunnel
nor a pod network runs here, so each of those hops is a relay:

- ``tcp:ADDR:PORT=tls:ADDR:PORT`` (capture): accept plain TCP, as ztunnel accepts a captured
  connection, and carry it to the waypoint in TLS presenting ``--cert`` (the client's identity,
  verified against ``--ca``); ``tls+unix:PATH`` does the same over a Unix socket, which crosses
  network namespaces (from the pods' node to the host where the waypoint listens);
- ``unix:PATH=tcp:ADDR:PORT`` (into a pod): accept on a Unix socket that Envoy's cluster
  connects to, and connect to the workload's port; run inside the pod's network namespace
  (``nsenter --net=...``), the socket file is how the host's network reaches into the pod's.

The relays move bytes and decide nothing: no policy is enforced here (ztunnel's own L4 decisions
are not stood in). Usage::

    python ztunnel_standin.py --route tcp:127.20.0.1:8080=tls:127.9.9.1:8080 \\
        --cert sender.pem --key sender-key.pem --ca ca.pem

It prints ``ready`` on stdout once every route listens, and relays until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_CHUNK = 1 << 16


@dataclass(frozen=True)
class Endpoint:
    """One side of a route: ``tcp``, ``unix``, or (connect only) ``tls``, ``tls+unix``."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``tcp:ADDR:PORT``, ``tls:ADDR:PORT``, ``unix:PATH`` or ``tls+unix:PATH``."""
        scheme, _, rest = text.partition(":")
        if scheme in ("unix", "tls+unix") and rest:
            return cls(scheme, path=rest)
        host, _, port = rest.rpartition(":")
        if scheme in ("tcp", "tls") and host and port.isdigit():
            return cls(scheme, host=host, port=int(port))
        raise ValueError(f"not an endpoint (tcp:ADDR:PORT, tls:ADDR:PORT, unix:PATH): {text!r}")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _open(target: Endpoint, tls: ssl.SSLContext | None) -> tuple[Any, Any]:
    if target.scheme == "unix":
        return await asyncio.open_unix_connection(target.path)
    if target.scheme == "tls+unix":
        return await asyncio.open_unix_connection(target.path, ssl=tls, server_hostname="")
    if target.scheme == "tls":
        return await asyncio.open_connection(target.host, target.port, ssl=tls)
    return await asyncio.open_connection(target.host, target.port)


def _handler(target: Endpoint, tls: ssl.SSLContext | None) -> Any:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await _open(target, tls)
        except (ConnectionError, OSError, ssl.SSLError):
            writer.close()  # the client sees its connection closed, as when ztunnel cannot connect
            return
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            for w in (writer, upstream_writer):
                with contextlib.suppress(Exception):
                    w.close()

    return relay


async def serve(
    routes: list[tuple[Endpoint, Endpoint]], tls: ssl.SSLContext | None, ready: asyncio.Event
) -> None:
    """Listen on every route's first endpoint and relay to its second until cancelled."""
    servers: list[asyncio.AbstractServer] = []
    for listen, target in routes:
        if target.scheme.startswith("tls") and tls is None:
            raise ValueError("a tls: route needs --cert, --key and --ca")
        handler = _handler(target, tls)
        if listen.scheme == "unix":
            Path(listen.path).unlink(missing_ok=True)
            servers.append(await asyncio.start_unix_server(handler, listen.path))
        elif listen.scheme == "tcp":
            servers.append(await asyncio.start_server(handler, listen.host, listen.port))
        else:
            raise ValueError(f"cannot listen on {listen}")
    ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        for server in servers:
            server.close()


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """TLS to the waypoint presenting ``cert``; the waypoint's certificate must chain to ``ca``."""
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False  # the waypoint is reached by address; its chain is verified
    context.load_cert_chain(cert, key)
    return context


def main(argv: list[str] | None = None) -> None:
    """Relay the ``--route`` pairs until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        description="Relay TCP or Unix-socket connections (see the module)."
    )
    parser.add_argument("--route", action="append", required=True, help="LISTEN=TARGET")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--ca")
    args = parser.parse_args(argv)
    routes = []
    for route in args.route:
        listen, _, target = route.partition("=")
        routes.append((Endpoint.parse(listen), Endpoint.parse(target)))
    tls = client_context(args.cert, args.key, args.ca) if args.cert else None

    async def run() -> None:
        ready = asyncio.Event()
        task = asyncio.ensure_future(serve(routes, tls, ready))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # a failure to listen: raise it
        print("ready", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
    except (OSError, ValueError) as error:
        print(f"ztunnel stand-in: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
