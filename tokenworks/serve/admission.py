"""Admission: how many engine requests the server holds at once, and the 429 beyond that.

The server holds at most `max_num_seqs + max_queued_requests` engine requests (each of `n`
choices and each prompt of a batch counts); beyond that it answers 429 with Retry-After
instead of queueing without bound.
"""

from __future__ import annotations

from tokenworks.serve.errors import APIError


class Admission:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0

    def admit(self, count: int) -> Ticket:
        """Reserve room for `count` engine requests, or raise 429 (400 if it could never fit)."""
        if count > self.capacity:
            raise APIError(
                400, f"this request needs {count} engine requests (prompts x n); this server holds at most "
                f"{self.capacity} at once", param="n",
            )  # fmt: skip
        if self.in_flight + count > self.capacity:
            raise APIError(
                429, f"the server's queue is full ({self.in_flight} requests in flight, at most {self.capacity}); "
                "retry later", code="queue_full", headers={"Retry-After": "1"},
            )  # fmt: skip
        self.in_flight += count
        return Ticket(self, count)


class Ticket:
    """Room held in the queue; released once, however the request ends."""

    def __init__(self, admission: Admission, count: int) -> None:
        self.admission, self.count = admission, count

    def release(self) -> None:
        if self.count:
            self.admission.in_flight -= self.count
            self.count = 0
