"""Turns the core's token deltas into what callers get back, one request at a time.

The caller's process keeps a `RequestState` per request: it detokenizes incrementally,
applies stop strings (ending the request in the core when one appears), and while
streaming holds back the few characters that might still become a stop string.
"""

from __future__ import annotations

from tokenworks.engine.messages import CoreOutput
from tokenworks.engine.request_output import RequestMetrics, RequestOutput
from tokenworks.engine.sampling_params import SamplingParams
from tokenworks.model.detokenizer import IncrementalDetokenizer


class RequestState:
    """One request's output as the caller sees it, updated from each core delta."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        detokenizer: IncrementalDetokenizer | None,
    ) -> None:
        self.params = params
        self.detokenizer = detokenizer
        self.output = RequestOutput(request_id, list(prompt_token_ids))
        self._emitted_chars = 0  # of output.text, already handed out as delta_text
        self._holdback = max((len(s) for s in params.stop), default=1) - 1

    def update(self, core: CoreOutput) -> tuple[RequestOutput, bool]:
        """Apply one core delta; returns the output and whether a stop string just ended it
        (the caller then aborts the request in the core)."""
        output = self.output
        if output.finished:  # a stop string ended it; these are tokens from before the abort landed
            output.delta_token_ids, output.delta_text = [], ""
            return output, False
        output.token_ids.extend(core.new_token_ids)
        output.delta_token_ids = list(core.new_token_ids)
        if core.logprobs:
            output.logprobs.extend(core.logprobs)
        if core.prompt_logprobs is not None:
            output.prompt_logprobs, output.prompt_ranks = core.prompt_logprobs, core.prompt_ranks
        output.num_cached_tokens = core.num_cached_tokens
        output.cumulative_logprob, output.min_logprob = core.cumulative_logprob, core.min_logprob
        output.metrics = RequestMetrics(
            core.arrival_time, core.first_scheduled_time, core.first_token_time, core.finished_time
        )
        stopped_by_string = False
        if self.detokenizer is not None:
            text = self.detokenizer.text + self.detokenizer.push(core.new_token_ids)
            if core.finish_reason is not None:
                text += self.detokenizer.flush()
            stopped_by_string = self._apply_stop_strings(text)
        if core.finish_reason is not None and not output.finished:
            output.finish_reason = core.finish_reason
            last = core.new_token_ids[-1] if core.new_token_ids else None
            if core.finish_reason == "stop" and last in self.params.stop_token_ids:
                output.stop_reason = last  # None when the model's own end-of-sequence token ended it
        self._set_delta_text()
        return output, stopped_by_string

    def _apply_stop_strings(self, text: str) -> bool:
        output = self.output
        if output.finished:
            return False
        if self.params.stop:
            search_from = max(0, len(output.text) - self._holdback)
            found = [(text.find(stop, search_from), stop) for stop in self.params.stop]
            found = [(index, stop) for index, stop in found if index >= 0]
            if found:
                index, stop = min(found)
                end = index + len(stop) if self.params.include_stop_str_in_output else index
                output.text = text[:end]
                output.finish_reason, output.stop_reason = "stop", stop
                return True
        output.text = text
        return False

    def _set_delta_text(self) -> None:
        output = self.output
        safe = len(output.text) if output.finished else max(self._emitted_chars, len(output.text) - self._holdback)
        output.delta_text = output.text[self._emitted_chars : safe]
        self._emitted_chars = safe
