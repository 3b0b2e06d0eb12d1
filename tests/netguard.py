"""Nothing a test does may reach outside this machine: an audit hook (PEP 578) refuses, in the test process, every
connection and datagram to an address that is not loopback, and every name lookup but this machine's own names, with
an OSError that fails the test where it happens (conftest.py installs it for the whole run). It sees Python's socket
calls only: the processes a test starts are not covered by it (test_tau2 and test_ray guard theirs)."""

from __future__ import annotations

import ipaddress
import socket
import sys

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _is_local(host) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the wildcard for a server socket, no lookup
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]")
    if host in _LOCAL_NAMES or host in (socket.gethostname(), ""):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # a name to look up: a DNS query could leave the machine
    return address.is_loopback or address.is_unspecified


def refuse_outside(event: str, args: tuple) -> None:
    if event in ("socket.connect", "socket.sendto"):
        sock, address = args[0], args[-1]
        if getattr(sock, "family", None) == socket.AF_UNIX or not isinstance(address, tuple):
            return
        host = address[0]
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
        host = args[0]
    else:
        return
    if not _is_local(host):
        raise OSError(f"tests/netguard.py: {event} to {host!r} would leave this machine")


def install() -> None:
    if not getattr(sys, "_eexp_netguard", False):
        sys.addaudithook(refuse_outside)
        sys._eexp_netguard = True
