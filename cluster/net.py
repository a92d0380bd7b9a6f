"""Loopback ports and small HTTP calls: pick a free port, probe one, wait for a server.

One implementation used by the local cluster, the S3 test server, the benchmarks and the tests.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from typing import Any


def dial_host(host: str) -> str:
    """Where a client on this machine connects to a server bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "localhost") else host


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((dial_host(host) if host == "localhost" else host, 0))
        return sock.getsockname()[1]


def listening(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((dial_host(host), port)) == 0


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts connections on host:port or the port cannot be bound."""
    if listening(port, host):
        return True
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like the servers do
        try:
            sock.bind(("127.0.0.1" if host == "localhost" else host, port))
        except OSError:
            return True
    return False


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0,
              process: subprocess.Popen | None = None) -> None:
    """Return once host:port accepts connections; TimeoutError after ``timeout`` s, or as soon
    as ``process`` (the server being waited for) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port, host):
            return
        if process is not None and process.poll() is not None:
            raise TimeoutError(f"the server for {host}:{port} exited with code {process.returncode}")
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def http_json(url: str, token: str | None = None, timeout: float = 5.0) -> Any:
    """GET ``url`` (with a bearer token if given) and decode its JSON body."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode())
