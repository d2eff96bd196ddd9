"""The node's IMDSv2 notice watcher against a local HTTP server that speaks IMDSv2 as EC2 does (tests/aws_nodes.py's
FakeImds): a token from PUT, 401 for a GET without a valid token, 404 until a document exists."""
from __future__ import annotations

import pytest

from cluster.node.imds import INSTANCE_ACTION_PATH, REBALANCE_PATH, ImdsNoticeWatcher
from tests.aws_nodes import FakeImds, imds_time


@pytest.fixture
def imds():
    server = FakeImds()
    yield server
    server.close()


def test_no_notice_until_ec2_posts_an_instance_action(imds):
    watcher = ImdsNoticeWatcher(imds.url)
    watcher.poll_once()
    assert watcher.notice_deadline() is None and watcher.rebalance_at() is None
    imds.documents[INSTANCE_ACTION_PATH] = f'{{"action": "terminate", "time": "{imds_time(1_900_000_120)}"}}'
    watcher.poll_once()
    assert watcher.notice_deadline() == 1_900_000_120
    assert watcher.action == "terminate"


def test_every_get_carries_a_token_from_put(imds):
    watcher = ImdsNoticeWatcher(imds.url)
    watcher.poll_once()
    watcher.poll_once()
    methods = [method for method, _, _ in imds.requests]
    assert methods[0] == "PUT" and methods.count("PUT") == 1, "one token serves many reads"
    assert all(valid for _, _, valid in imds.requests)
    assert {path for method, path, _ in imds.requests if method == "GET"} == {INSTANCE_ACTION_PATH, REBALANCE_PATH}


def test_an_expired_token_is_renewed(imds):
    watcher = ImdsNoticeWatcher(imds.url)
    watcher.poll_once()
    imds.revoke()
    imds.documents[INSTANCE_ACTION_PATH] = f'{{"action": "stop", "time": "{imds_time(1_900_000_000)}"}}'
    watcher.poll_once()
    assert watcher.notice_deadline() == 1_900_000_000 and watcher.action == "stop"
    assert [method for method, _, _ in imds.requests].count("PUT") == 2


def test_rebalance_recommendation_has_no_deadline(imds):
    imds.documents[REBALANCE_PATH] = f'{{"noticeTime": "{imds_time(1_900_000_050)}"}}'
    watcher = ImdsNoticeWatcher(imds.url)
    watcher.poll_once()
    assert watcher.rebalance_at() == 1_900_000_050
    assert watcher.notice_deadline() is None


def test_unreachable_imds_is_no_notice():
    watcher = ImdsNoticeWatcher("http://127.0.0.1:9", timeout_s=0.5)
    watcher.poll_once()
    assert watcher.notice_deadline() is None


def test_background_polling_sees_the_notice_and_stops(imds):
    watcher = ImdsNoticeWatcher(imds.url, interval_s=0.05)
    watcher.start()
    imds.documents[INSTANCE_ACTION_PATH] = f'{{"action": "terminate", "time": "{imds_time(1_900_000_120)}"}}'
    watcher._thread.join(timeout=30)
    assert not watcher._thread.is_alive(), "the watcher stops polling once it has the notice"
    assert watcher.notice_deadline() == 1_900_000_120
    watcher.stop()
