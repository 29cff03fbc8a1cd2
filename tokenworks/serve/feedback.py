"""POST /v1/feedback: what a user says of an answer (a rating, a correction), into the request log.

The feedback goes through the log writer's queue, behind every request row queued before it,
so feedback for an answer received a moment ago (its row not yet committed) finds its request.
Unknown request ids are a 404, malformed bodies a 400; without --log-db the route answers 404
saying that the server keeps no log.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

from tokenworks.serve.errors import APIError
from tokenworks.serve.protocol import ERROR_RESPONSES

router = APIRouter()

WRITER_TIMEOUT_S = 10.0  # the writer commits every second; longer than this, it is stuck (a full disk)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    request_id: str = Field(..., min_length=1, description="The id of the answer (cmpl-..., chatcmpl-...).")
    rating: StrictInt | StrictFloat | None = Field(None, description="Yours to scale; below 0 counts as negative.")
    correction: str | None = Field(None, description="The answer that should have been given.")

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackRequest:
        if self.rating is None and self.correction is None:
            raise ValueError("give a rating, a correction or both")
        return self


class Feedback(BaseModel):
    object: str = "feedback"
    id: int
    request_id: str
    rating: float | None
    correction: str | None
    created: float


@router.post(
    "/v1/feedback", response_model=Feedback, responses=ERROR_RESPONSES,
    summary="Rate or correct an answer logged in the request log (--log-db).",
)  # fmt: skip
async def create_feedback(body: FeedbackRequest, raw_request: Request) -> Feedback:
    request_log = raw_request.app.state.server.request_log
    if request_log is None:
        raise APIError(
            404, "this server keeps no request log, so it takes no feedback: start it with --log-db PATH",
            code="request_log_off",
        )  # fmt: skip
    done = request_log.feedback(body.request_id, body.rating, body.correction)
    try:
        row = await asyncio.wait_for(asyncio.wrap_future(done), WRITER_TIMEOUT_S)
    except TimeoutError:
        raise APIError(503, f"the request log did not store the feedback within {WRITER_TIMEOUT_S:g} s") from None
    if row is None:
        raise APIError(
            404, f"no request with id {body.request_id!r} in the request log", param="request_id",
            code="request_not_found",
        )  # fmt: skip
    return Feedback(**row)
