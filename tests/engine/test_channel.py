"""The caller-core socket (channel.py): whole messages in order, no send that waits, and a
closed peer that is news once everything it sent has been read."""

from __future__ import annotations

import socket
import time

import pytest

from tokenworks.engine.channel import Channel, ChannelClosed
from tokenworks.engine.messages import CoreOutput, StepOutputs


@pytest.fixture
def pair():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a, b = Channel(left), Channel(right)
    yield a, b
    a.close()
    b.close()


def test_messages_arrive_whole_and_in_order(pair) -> None:
    a, b = pair
    sent = [StepOutputs([CoreOutput(f"req-{i}", [i, i + 1])], None) for i in range(50)]
    for message in sent:
        a.send(message)
    received = []
    while len(received) < len(sent):
        received += b.receive(timeout_s=5)
    assert [m.outputs[0].request_id for m in received] == [f"req-{i}" for i in range(50)]
    assert [m.outputs[0].new_token_ids for m in received] == [[i, i + 1] for i in range(50)]


def test_a_message_larger_than_the_socket_never_blocks_its_sender(pair) -> None:
    a, b = pair
    big = list(range(2_000_000))  # about 10 MB pickled: far beyond a socket's buffer
    started = time.monotonic()
    a.send(big)
    assert time.monotonic() - started < 1.0
    assert a.has_pending_output  # the rest waits in memory for the reader to make room
    received: list[object] = []
    while not received:
        a.flush()
        received = b.receive(timeout_s=0.01)
    assert received == [big]
    assert a.flush() and not a.has_pending_output


def test_a_partial_message_waits_for_the_rest(pair) -> None:
    a, b = pair
    a.send("first")
    payload = _frame("second")
    a.sock.sendall(payload[:5])  # half a length header
    assert b.receive(timeout_s=1) == ["first"]
    assert b.receive(timeout_s=0.05) == []
    a.sock.sendall(payload[5:])
    assert b.receive(timeout_s=1) == ["second"]


def test_what_a_closed_peer_sent_is_read_before_the_close_is_reported(pair) -> None:
    a, b = pair
    a.send("last words")
    a.close()
    assert b.receive(timeout_s=1) == ["last words"]
    with pytest.raises(ChannelClosed):
        b.receive(timeout_s=1)


def test_sending_to_a_closed_peer_raises(pair) -> None:
    a, b = pair
    b.close()
    with pytest.raises(ChannelClosed):
        for _ in range(3):  # the first write may still land in the kernel's buffer
            a.send("anyone there?")


def test_receive_waits_no_longer_than_asked(pair) -> None:
    _, b = pair
    started = time.monotonic()
    assert b.receive(timeout_s=0.1) == []
    assert 0.09 <= time.monotonic() - started < 1.0


def _frame(message: object) -> bytes:
    """The bytes `Channel.send` writes for one message."""
    left, right = socket.socketpair()
    scratch = Channel(left)
    scratch.send(message)
    right.setblocking(False)
    data = right.recv(1 << 20)
    scratch.close()
    right.close()
    return data
