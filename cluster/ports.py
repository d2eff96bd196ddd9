"""Free TCP ports for servers started by port number (a Ray head, and the servers tests start), chosen below the
kernel's ephemeral range.

A port the kernel hands out for `bind(0)` is an ephemeral one: once the probe closes it, any outgoing connection
(Ray's workers open hundreds) may take it before the server binds it, and the server dies with "address already in
use". Ports below the ephemeral range are only ever taken by an explicit bind.
"""
from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000
RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int:
    try:
        return int(RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def unused_ports(count: int, address: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that nothing listens on now and the kernel does not give to outgoing connections."""
    high = _ephemeral_low()
    ports: list[int] = []
    for port in random.sample(range(LOWEST, high), k=high - LOWEST):
        if _bindable(address, port):
            ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"fewer than {count} free ports between {LOWEST} and {high} on {address}")
