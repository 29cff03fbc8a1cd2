"""The line between a caller and its engine core: pickled messages over one Unix socket.

Each message is a pickle behind an 8-byte length. The caller makes a socket pair and hands
one end to the core process it starts (client.py); both ends are non-blocking, and a send
that finds the socket full keeps the rest in memory until the peer makes room, so neither
side ever waits on the other to write: not a caller streaming requests to a core busy
sending outputs, and not a core whose caller stopped reading.

Why not ZMQ (which this replaced): its sockets do their I/O on a background thread of each
process, so every token the core sent woke four threads instead of two, and on two cores the
core's I/O thread took its time from the model's OpenMP threads. Here the core's main thread
writes to the socket itself and the caller's event loop reads it directly: a streamed token
of the tiny benchmark model cost its caller 53-73 us of CPU instead of 110-123 (a 1 kHz
ping of 600-byte messages, each receiver in an asyncio loop as AsyncLLM's). The end of the
connection is also news: the kernel closes a dead core's socket, and its caller reads that
at once.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
import time

_LENGTH = struct.Struct("<Q")
_READ_CHUNK = 256 * 1024  # bytes per recv; a step's outputs for 256 requests are about 30 KB


class ChannelClosed(Exception):
    """The other end is gone (it closed the socket, or its process ended)."""


class Channel:
    """One end of a connected socket: framed pickled messages, sent and read without blocking."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._outbox = bytearray()  # written when the socket has room
        self._inbox = bytearray()  # read, not yet a whole message
        self._chunk = bytearray(_READ_CHUNK)
        self._eof = False
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def has_pending_output(self) -> bool:
        return bool(self._outbox)

    def send(self, message: object) -> None:
        """Queue the message and write as much as the socket takes now; ChannelClosed if the peer is gone."""
        payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        self._outbox += _LENGTH.pack(len(payload))
        self._outbox += payload
        self.flush()

    def flush(self) -> bool:
        """Write what the socket takes now; True when nothing is left queued."""
        while self._outbox:
            try:
                written = self.sock.send(self._outbox)
            except BlockingIOError:
                return False
            except OSError as error:  # EPIPE, ECONNRESET: the reader is gone
                raise ChannelClosed(str(error)) from None
            del self._outbox[:written]
        return True

    def read_available(self) -> list[object]:
        """Every whole message that has arrived, without waiting; ChannelClosed once the peer is
        gone and nothing it sent is left to read."""
        while not self._eof:
            try:
                size = self.sock.recv_into(self._chunk)
            except BlockingIOError:
                break
            except ConnectionResetError:
                size = 0
            if size == 0:
                self._eof = True
            else:
                self._inbox += memoryview(self._chunk)[:size]
        messages = self._take_messages()
        if not messages and self._eof:
            raise ChannelClosed("the other end closed the connection")
        return messages

    def receive(self, timeout_s: float | None) -> list[object]:
        """The messages that have arrived, waiting up to `timeout_s` (None: no limit) for the first
        one; queued output goes out meanwhile, as the peer makes room for it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.flush()
            messages = self.read_available()
            if messages:
                return messages
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            self._poller.modify(self.sock, select.POLLIN | (select.POLLOUT if self._outbox else 0))
            self._poller.poll(None if remaining is None else max(1, round(remaining * 1000)))

    def send_all(self, timeout_s: float) -> bool:
        """Wait (up to `timeout_s`) until the queued output is written: for last words before exit."""
        deadline = time.monotonic() + timeout_s
        self._poller.modify(self.sock, select.POLLOUT)
        while not self.flush():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._poller.poll(max(1, round(remaining * 1000)))
        return True

    def close(self) -> None:
        self.sock.close()

    def _take_messages(self) -> list[object]:
        inbox, messages, start = self._inbox, [], 0
        while len(inbox) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(inbox, start)
            end = start + _LENGTH.size + length
            if end > len(inbox):
                break
            messages.append(pickle.loads(inbox[start + _LENGTH.size : end]))
            start = end
        del inbox[:start]
        return messages
