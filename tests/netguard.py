"""Nothing a test does may reach outside this machine: an audit hook (PEP 578) refuses every connection and datagram
to an address that is not loopback, and every name lookup but this machine's own names, with an OSError where it
happens. conftest.py installs it in the test process, and carries it into every Python process a test starts: this
file, copied as `sitecustomize.py` into a folder put first on PYTHONPATH (`child_folder`), installs it there too,
and a refusal there is also written to EEXP_NETGUARD_LOG, which conftest reads after each test to fail it (a child's
OSError may be caught, retried or lost in its stderr). It sees Python's socket calls only, not those of C++
processes (llama-server, chromium, Ray's servers: test_ray traces those), and a child started with a PYTHONPATH of
its own goes without it unless `pythonpath()` made that (test_ray's clusters carry a guard of their own; test_wheel's
fresh environment, which installs with pip --no-index, carries none)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import sys
import tempfile

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
LOG_VARIABLE = "EEXP_NETGUARD_LOG"


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
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args[0], args[-1]
        if getattr(sock, "family", None) == socket.AF_UNIX or not isinstance(address, tuple):
            return  # sendmsg on a connected socket: no address (its connect was checked)
        host = address[0]
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        host = args[0]
    elif event == "socket.getnameinfo":  # a reverse lookup; its one argument is the sockaddr, (host, port, ...)
        host = args[0][0] if args and isinstance(args[0], tuple) and args[0] else None
        if host is None:
            return
    else:
        return
    if not _is_local(host):
        said = f"tests/netguard.py: {event} to {host!r} would leave this machine"
        log = os.environ.get(LOG_VARIABLE)
        if log and getattr(sys, "_eexp_netguard_child", False):
            with open(log, "a") as f:
                f.write(f"{said} (pid {os.getpid()}: {' '.join(sys.argv[:3])})\n")
        raise OSError(said)


def install() -> None:
    if not getattr(sys, "_eexp_netguard", False):
        sys.addaudithook(refuse_outside)
        sys._eexp_netguard = True


def child_folder() -> str:
    """A new folder holding this file as `sitecustomize.py`: first on a child's PYTHONPATH, it guards the child."""
    folder = tempfile.mkdtemp(prefix="eexp-netguard-")
    shutil.copy(__file__, os.path.join(folder, "sitecustomize.py"))
    return folder


def pythonpath(*paths) -> str:
    """A PYTHONPATH of `paths` behind the guard's folder (for a test that gives a child its own PYTHONPATH)."""
    guard = os.environ.get("EEXP_NETGUARD_DIR")
    return os.pathsep.join(str(p) for p in ([guard] if guard else []) + list(paths))


if __name__ == "sitecustomize":  # imported at a child's start, from child_folder()
    sys._eexp_netguard_child = True
    install()
