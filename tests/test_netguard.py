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


def test_loopback_is_left_alone():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert socket.getaddrinfo("localhost", 80)
    assert socket.getaddrinfo(None, 80, flags=socket.AI_PASSIVE)
