"""A loopback-only guard for test and demo processes: any socket aimed off 127.0.0.0/8 or ::1 fails.

The test suite and `make demo` must never send traffic anywhere but this machine. Server addresses in
the test zone (ns1 = 192.0.2.1 ...) are documentation data, and a discovery bug once tried to query
them; with the guard installed such a slip raises at once instead of leaving the machine. The guard is
installed by `guard_this_process_and_children()`: in this process at once, and in every Python process
started from it through `sitecustomize` (tests/devkit/guard/ on PYTHONPATH; Python imports that module at
start-up). The product knows nothing of it, and production never installs it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

ENV = "SUBDOMAIND_LOOPBACK_ONLY"
GUARD_DIR = Path(__file__).resolve().parent / "guard"
_installed = False


class OffLoopback(OSError):
    pass


def _check(address: Any) -> None:
    if not isinstance(address, tuple) or not address:
        return  # AF_UNIX paths and the like
    host = address[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host in ("localhost",):
            return
        raise OffLoopback(f"loopback-only guard: refusing to reach host name {host!r}") from None
    if not ip.is_loopback:
        raise OffLoopback(f"loopback-only guard: refusing to send to {host} (tests stay on 127.0.0.1)")


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    real_connect, real_connect_ex, real_sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto

    def connect(self: socket.socket, address: Any) -> None:
        _check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check(address)
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        _check(args[-1])
        return real_sendto(self, data, *args)

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        # Name lookups go through the C resolver, past the socket methods: only loopback names here.
        if host not in (None, "localhost", b"localhost"):
            _check((host.decode() if isinstance(host, bytes) else host, 0))
        return real_getaddrinfo(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.socket.sendto = sendto  # type: ignore[method-assign,assignment]


def guard_this_process_and_children() -> None:
    """The guard here, and in every Python program this process starts (the daemons under test)."""
    os.environ[ENV] = "1"
    path = os.environ.get("PYTHONPATH", "")
    if str(GUARD_DIR) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(GUARD_DIR), path) if p)
    install()
