"""A cluster's pod network, for the dispatch tier: one network namespace per pod, on one bridge.

Each workload (a unit's Pebble and the servers it starts) gets a network namespace of its own
with an address on a bridge, as a pod has its own IP, so that several units serve the same ports
and reach each other by address, away from whatever listens on this host. The bridge lives in a
"node" namespace where the units' hooks run; the real API server, which listens on this host's
loopback, is forwarded into that namespace on the same address and port (through a Unix socket,
which crosses network namespaces), so a hook reaches it as before.

Needs root, ``unshare``/``nsenter`` (util-linux) and ``ip`` (iproute2).

Run as a script, it is the forwarder: ``pod_network.py forward TCP_PORT UNIX_SOCKET`` listens on
``127.0.0.1:TCP_PORT`` (in whatever network namespace it runs) and relays every connection to
``UNIX_SOCKET``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

BRIDGE_ADDRESS = "10.1.0.254"
PREFIX = 24

_HOLD = "ip link set lo up && {extra} echo ready && exec sleep infinity"


class PodNetworkError(RuntimeError):
    """The network could not be set up; the message says what is missing."""


def _relay(a: socket.socket, b: socket.socket) -> None:
    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    threads = [
        threading.Thread(target=pump, args=(a, b), daemon=True),
        threading.Thread(target=pump, args=(b, a), daemon=True),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    a.close()
    b.close()


def _serve(listener: socket.socket, connect: object) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = connect()  # type: ignore[operator]
        except OSError:
            client.close()
            continue
        threading.Thread(target=_relay, args=(client, upstream), daemon=True).start()


def _hold(extra: str = "") -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", _HOLD.format(extra=extra)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        _, err = proc.communicate()
        raise PodNetworkError(f"cannot create a network namespace: {err.strip()}")
    return proc


def _run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PodNetworkError(f"{' '.join(args)} failed: {result.stderr.strip()}")


class PodNetwork:
    """The node namespace with its bridge, the forwarded API server, and one namespace per pod."""

    def __init__(self, workdir: Path, api_port: int) -> None:
        for tool in ("unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                raise PodNetworkError(f"the pod network needs {tool} (util-linux, iproute2)")
        workdir.mkdir(parents=True, exist_ok=True)
        self._procs: list[subprocess.Popen[str]] = []
        self.node = _hold(
            f"ip link add br0 type bridge && ip addr add {BRIDGE_ADDRESS}/{PREFIX} dev br0 && "
            "ip link set br0 up &&"
        )
        self._procs.append(self.node)
        # This host's API server, reachable from the node namespace at 127.0.0.1:<api_port>.
        self._api_socket = workdir / "api.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self._api_socket))
        self._listener.listen(64)
        threading.Thread(
            target=_serve,
            args=(self._listener, lambda: socket.create_connection(("127.0.0.1", api_port))),
            daemon=True,
        ).start()
        forwarder = subprocess.Popen(
            [*self.in_node(), sys.executable, "-I", __file__, "forward", str(api_port),
             str(self._api_socket)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self._procs.append(forwarder)
        assert forwarder.stdout is not None
        if forwarder.stdout.readline().strip() != "ready":
            self.close()
            raise PodNetworkError("the API server forwarder did not start")
        self._pods: dict[str, subprocess.Popen[str]] = {}

    def in_node(self) -> list[str]:
        """Command prefix that runs a command in the node namespace (where hooks run)."""
        return ["nsenter", f"--net=/proc/{self.node.pid}/ns/net"]

    def add_pod(self, name: str, address: str) -> list[str]:
        """Create a pod namespace with ``address`` on the bridge; return its command prefix."""
        pod = _hold()
        self._procs.append(pod)
        self._pods[name] = pod
        veth = f"v{len(self._pods)}"
        _run(*self.in_node(), "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
             "netns", str(pod.pid))  # fmt: skip
        _run(*self.in_node(), "ip", "link", "set", veth, "master", "br0", "up")
        inside = ["nsenter", f"--net=/proc/{pod.pid}/ns/net"]
        _run(*inside, "ip", "addr", "add", f"{address}/{PREFIX}", "dev", "eth0")
        _run(*inside, "ip", "link", "set", "eth0", "up")
        return inside

    def close(self) -> None:
        """End every namespace holder and forwarder (the namespaces go with them)."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self._procs.clear()
        with contextlib.suppress(OSError):
            self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._api_socket)


def _forward(port: int, unix_path: str) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=64)

    def connect() -> socket.socket:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(unix_path)
        return upstream

    print("ready", flush=True)
    _serve(listener, connect)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "forward":
        _forward(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit("usage: pod_network.py forward TCP_PORT UNIX_SOCKET")
