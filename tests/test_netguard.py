"""The tests' guard against reaching outside (tests/netguard.py, installed by conftest.py for the whole run)."""

from __future__ import annotations

import socket

import pytest


def test_a_connection_beyond_loopback_fails_the_test_that_makes_it():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(OSError, match="would leave"):
        s.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed anywhere
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError, match="would leave"):
        s.sendto(b"x", ("8.8.8.8", 53))  # a datagram too (Ray once found its address this way)
    with pytest.raises(OSError, match="would leave"):
        socket.getaddrinfo("huggingface.co", 443)  # the lookup alone could leave the machine
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError, match="would leave"):
        s.sendmsg([b"x"], [], 0, ("192.0.2.1", 53))  # a datagram by sendmsg
    for reverse in (lambda: socket.gethostbyaddr("192.0.2.1"), lambda: socket.getnameinfo(("192.0.2.1", 53), 0)):
        with pytest.raises(OSError, match="would leave"):
            reverse()  # a reverse lookup asks a name server too


def test_loopback_is_left_alone():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert socket.getaddrinfo("localhost", 80)
    assert socket.getaddrinfo(None, 80, flags=socket.AI_PASSIVE)
    assert socket.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST)[0] == "127.0.0.1"


def test_a_process_a_test_starts_is_guarded_and_its_attempt_logged(tmp_path):
    """Carried by PYTHONPATH into a child Python: the attempt fails there too, and is written to the log that fails
    the test that started it (here a log of its own, so that this test passes)."""
    import os
    import subprocess
    import sys

    from netguard import LOG_VARIABLE

    log = tmp_path / "refused.log"
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import socket\ntry:\n    socket.getaddrinfo('pypi.org', 443)\nexcept OSError as e:\n    print(e)",
        ],
        env={**os.environ, LOG_VARIABLE: str(log)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.stdout == "tests/netguard.py: socket.getaddrinfo to 'pypi.org' would leave this machine\n"
    assert log.read_text().startswith("tests/netguard.py: socket.getaddrinfo to 'pypi.org' would leave this machine")
