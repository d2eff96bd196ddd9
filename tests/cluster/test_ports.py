"""Ports for servers started by number survive a port that another process takes between the probe and the bind."""
from __future__ import annotations

import socket

from cluster.ports import _ephemeral_low, unused_ports
from tests import s3_server as s3_module


def test_unused_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    ports = unused_ports(8)
    assert len(set(ports)) == 8
    assert all(20000 <= port < _ephemeral_low() for port in ports)
    for port in ports:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


def test_weed_starts_on_new_ports_when_one_was_taken(tmp_path, monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    calls = []

    def ports_once_with_a_taken_one(count):
        calls.append(count)
        ports = unused_ports(count)
        if len(calls) == 1:
            ports[3] = taken.getsockname()[1]  # the volume server's gRPC port: the one CI lost
        return ports

    monkeypatch.setattr(s3_module, "unused_ports", ports_once_with_a_taken_one)
    server = s3_module._new_server(tmp_path)
    process = s3_module._start_weed(tmp_path, server)
    try:
        assert len(calls) == 2
        assert "address already in use" in (tmp_path / "weed-0.out").read_text(errors="replace")
        assert server.client().list_buckets()["Buckets"] == []
    finally:
        s3_module._stop(process)
        taken.close()
