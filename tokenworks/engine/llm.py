"""`LLM`: offline batch generation, the engine's simplest front door.

llm = LLM("path/to/checkpoint", threads=2)
outputs = llm.generate(["Hello", [1, 2, 3]], SamplingParams(max_tokens=32, temperature=0))
outputs[0].text, outputs[0].token_ids, outputs[0].finish_reason
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenworks.engine.client import WATCH_INTERVAL_MS, EngineCoreClient
from tokenworks.engine.frontend import Frontend, Prompt
from tokenworks.engine.messages import Abort, AddRequest, RequestError, StepOutputs, UtilityCall
from tokenworks.engine.options import EngineOptions
from tokenworks.engine.request_output import RequestOutput
from tokenworks.engine.sampling_params import SamplingParams

# While `generate` runs, this process only waits for the core: the core's OpenMP threads have
# the cores to themselves and may spin between parallel regions (about 0.2 ms) instead of
# sleeping, which made one-stream decoding of the tiny benchmark model 2.5x faster. The server
# keeps the default of sleeping at once, because its HTTP process needs the same cores.
OFFLINE_OMP_SPIN_COUNT = 20000


class LLM:
    def __init__(self, model: str | Path, multiprocess: bool = True, **engine_options: Any) -> None:
        """Load the model in an engine-core process (or this one, with multiprocess=False).

        `omp_spin_count` defaults to OFFLINE_OMP_SPIN_COUNT here; pass None on a machine whose
        cores are busy with other work, where spinning threads slow each other down.
        """
        engine_options.setdefault("omp_spin_count", OFFLINE_OMP_SPIN_COUNT)
        options = EngineOptions(model=model, **engine_options)
        if multiprocess:
            self.client = EngineCoreClient(options)
            ready = self.client.wait_ready()
        else:
            from tokenworks.engine.inprocess_client import InProcessCoreClient  # torch, in this process

            self.client = InProcessCoreClient(options)
            ready = self.client.ready
        self.frontend = Frontend(model, ready)
        self.tokenizer = self.frontend.tokenizer

    def generate(
        self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] | None = None,
        lora: str | Sequence[str | None] | None = None,
    ) -> list[RequestOutput]:  # fmt: skip
        """Generate for every prompt (text or token ids); outputs in the order of the prompts.

        `lora`: the name of a LoRA adapter (given in `lora_modules`) for every prompt, or one
        name or None per prompt; None is the base model.
        """
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params_list = _params_for(prompts, params)
        loras = _per_prompt(prompts, lora, "LoRA names")
        prompt_ids = [self.frontend.prompt_ids(prompt) for prompt in prompts]
        for ids, request_params, name in zip(prompt_ids, params_list, loras, strict=True):
            self.frontend.check(ids, request_params, name)
        states = {}
        for ids, request_params, name in zip(prompt_ids, params_list, loras, strict=True):
            request_id = self.frontend.next_request_id()
            states[request_id] = self.frontend.new_state(request_id, ids, request_params)
            # Without stop strings (which the caller finds in the text as it grows) nothing
            # needs the tokens before the request ends: the core then sends the outputs once.
            stream = bool(request_params.stop)
            self.client.send(
                AddRequest(request_id, ids, request_params, arrival_time=time.monotonic(), stream=stream, lora=name)
            )
        unfinished = set(states)
        try:
            while unfinished:
                message = self.client.receive(timeout_ms=WATCH_INTERVAL_MS)
                if isinstance(message, RequestError):
                    raise ValueError(message.message)
                if isinstance(message, StepOutputs):
                    self._apply(message, states, unfinished)
        finally:  # an error or a Ctrl-C: nothing keeps running in the core for no one
            if unfinished and self.client.dead_reason is None:
                self.client.send(Abort(sorted(unfinished)))
        return [state.output for state in states.values()]

    def _apply(self, message: StepOutputs, states: dict, unfinished: set[str]) -> None:
        for core_output in message.outputs:
            state = states.get(core_output.request_id)
            if state is None:
                continue  # a request of an earlier, interrupted call
            output, stopped_by_string = state.update(core_output)
            if stopped_by_string:
                self.client.send(Abort([core_output.request_id]))
            if output.finished:
                unfinished.discard(core_output.request_id)

    def reset_prefix_cache(self) -> None:
        self.client.send(UtilityCall(0, "reset_prefix_cache"))

    def shutdown(self) -> None:
        self.client.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _params_for(
    prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] | None
) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in prompts]
    return _per_prompt(prompts, params, "sampling parameters")


def _per_prompt(prompts: Sequence[Prompt], value: Any, what: str) -> list:
    """One value for every prompt, or a sequence of one per prompt."""
    if value is None or isinstance(value, str | SamplingParams):
        return [value] * len(prompts)
    if len(value) != len(prompts):
        raise ValueError(f"{len(value)} {what} for {len(prompts)} prompts")
    return list(value)
