"""Address resolution helpers: which lookups can skip the executor, and resolving `sock_connect`
addresses the way asyncio does.

A numeric host (an IPv4 or IPv6 literal, or None) with a numeric port needs no DNS, so the loop
answers it inline instead of paying a thread hop to the default executor.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

IP_FAMILIES = frozenset(f for f in (socket.AF_INET, getattr(socket, "AF_INET6", None)) if f is not None)


def _ip_family(host: str) -> int | None:
    """The family of an IP literal, or None if host is not one."""
    try:
        socket.inet_pton(socket.AF_INET, host)
        return socket.AF_INET
    except (OSError, ValueError):
        pass
    if socket.has_ipv6:
        try:
            socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
            return socket.AF_INET6
        except (OSError, ValueError):
            pass
    return None


def _numeric_port(port: Any) -> bool:
    if port is None or (isinstance(port, int) and not isinstance(port, bool)):
        return True
    if isinstance(port, bytes):
        port = port.decode("ascii", "replace")
    return isinstance(port, str) and port.isascii() and port.isdigit()


def is_numeric(host: Any, port: Any) -> bool:
    """True when getaddrinfo(host, port) needs neither DNS nor the services database."""
    if not _numeric_port(port):
        return False
    if host is None:
        return True
    if isinstance(host, bytes):
        try:
            host = host.decode("ascii")
        except UnicodeDecodeError:
            return False  # not an IP literal; the resolver decides what it is
    return isinstance(host, str) and _ip_family(host) is not None


async def resolve_address(
    loop: asyncio.AbstractEventLoop, address: Any, family: int, type: int, proto: int
) -> list[tuple[Any, ...]]:
    """getaddrinfo results for a (host, port, ...) address; the address itself when it is
    already numeric, keeping IPv6 flowinfo and scope id."""
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"address must be a (host, port) tuple, got {address!r}")
    host, port = address[:2]
    if isinstance(host, str) and _numeric_port(port) and _ip_family(host) == family:
        numeric_port = 0 if port is None else int(port)
        return [(family, type, proto, "", (host, numeric_port, *address[2:]))]
    infos = await loop.getaddrinfo(host, port, family=family, type=type, proto=proto)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned empty list")
    return infos
