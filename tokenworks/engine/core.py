"""The engine core: schedule, run, sample, update. Lives in its own process in serving.

`EngineCore.step()` reads as three lines: the scheduler picks the work, the model runner
computes it, and the results update the requests. Everything a caller needs comes back
as `CoreOutput` deltas (new token ids, finish reason) plus step statistics (messages.py).
"""

from __future__ import annotations

import logging
import time

import torch

from tokenworks.engine.kv_cache_manager import KVCacheManager
from tokenworks.engine.kv_events import KVEventPublisher
from tokenworks.engine.lora import LoraAdapter, LoraRegistry
from tokenworks.engine.malloc_tuning import keep_freed_memory
from tokenworks.engine.messages import CoreOutput, StepStats
from tokenworks.engine.model_runner import ModelRunner, PromptRows, kv_bytes_per_block
from tokenworks.engine.options import EngineOptions, available_memory_bytes
from tokenworks.engine.request import Request, RequestStatus, check_prompt
from tokenworks.engine.sampler import Sampler, score_tokens
from tokenworks.engine.sampling_params import SamplingParams
from tokenworks.engine.scheduler import Scheduler, SchedulerOutput
from tokenworks.engine.structured_output import GrammarMatchers
from tokenworks.model.checkpoint import load_generation_config, load_model

logger = logging.getLogger(__name__)

PROMPT_LOGITS_ROWS = 256  # prompt positions whose logits exist at once, when prompt logprobs are asked for


class EngineCore:
    def __init__(self, options: EngineOptions) -> None:
        options.validate()
        self.options = options
        if options.threads:
            torch.set_num_threads(options.threads)
        device = options.resolved_device()
        if device == "cpu":
            keep_freed_memory()
        self.model = load_model(options.model, dtype=options.dtype, device=device)
        config = self.model.config
        generation = load_generation_config(options.model)
        eos = generation.get("eos_token_id", config.eos_token_id)
        self.eos_token_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        block_size = options.resolved_block_size(device)
        num_blocks = self._num_blocks(device, block_size)
        self.max_model_len = min(options.max_model_len or config.max_position_embeddings, num_blocks * block_size)
        self.kv_cache = KVCacheManager(num_blocks, block_size, options.enable_prefix_caching)
        self.kv_events = self._kv_event_publisher()
        self.scheduler = Scheduler(
            self.kv_cache, options.max_num_batched_tokens, options.max_num_seqs, options.scheduling_policy
        )
        self.runner = ModelRunner(self.model, num_blocks, block_size, options.kernels, options.pack_weights)
        kernels = self.runner.kernels
        argmax = kernels.greedy_tokens if kernels is not None else None  # torch's argmax elsewhere
        self.sampler = Sampler(options.seed, device=device, argmax=argmax, score_sampled=options.score_sampled_tokens)
        self.grammars: GrammarMatchers | None = None  # built on the first structured-output request
        self.loras = LoraRegistry(config, options.max_loras, options.max_lora_rank, self.model.dtype, self.model.device)
        for name, path in (options.lora_modules or {}).items():
            self.load_lora(name, str(path))
        self.last_stats = StepStats(self.scheduler.stats())
        logger.info(
            "engine ready: %s on %s, %d KV blocks of %d tokens",
            config.architecture,
            device,
            num_blocks,
            block_size,
        )

    def _kv_event_publisher(self) -> KVEventPublisher | None:
        """Publishing KV events, when asked for (the pool then records them)."""
        config = self.options.kv_events
        if config is None or not config.publishing or not self.options.enable_prefix_caching:
            return None
        publisher = KVEventPublisher(config)
        self.kv_cache.pool.events = []
        logger.info("publishing KV events at %s (replay: %s)", publisher.endpoint, publisher.replay_endpoint)
        return publisher

    def publish_kv_events(self) -> None:
        """Hand the KV events since the last call to the publisher (when events are on). The
        loops that run `step()` call it once the step's outputs are on their way, not `step()`
        itself: handed over before the outputs were sent (the publisher's thread and ZMQ's
        woken on a core the API server shares, a router's batch arriving as it relays the
        token), a request's first token came 0.2-0.8 ms later direct and 1.2-2.0 ms later
        through the `kv` router at concurrency 1 (docs/benchmarks.md, Router, session 19)."""
        events = self.kv_cache.pool.events
        if events and self.kv_events is not None:
            self.kv_events.publish(events)
            self.kv_cache.pool.events = []

    def close(self) -> None:
        if self.kv_events is not None:
            self.kv_events.close()

    def _num_blocks(self, device: str, block_size: int) -> int:
        o = self.options
        if o.num_kv_blocks is not None:
            return o.num_kv_blocks
        per_block = kv_bytes_per_block(self.model, block_size)
        if o.kv_cache_memory_gib is not None:
            budget = int(o.kv_cache_memory_gib * 2**30)
        else:
            budget = int(available_memory_bytes(device) * o.kv_cache_fraction)
        return max(1, budget // per_block)

    # ---- requests in ---------------------------------------------------------------------

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, priority: int = 0,
        arrival_time: float | None = None, stream: bool = True, lora: str | None = None,
    ) -> None:  # fmt: skip
        """Queue a request; ValueError (the caller's 400) if it cannot fit the context or names
        no loaded adapter.

        A request that does not stream yields no per-step outputs, only its finished one
        with every token: offline callers then wake once per request instead of per step.
        """
        check_prompt(prompt_token_ids, params, self.max_model_len, self.model.config.vocab_size)
        adapter = self.loras.acquire(lora) if lora is not None else None
        request = Request(
            request_id, prompt_token_ids, params, self.eos_token_ids, priority, arrival_time,
            cache_salt=adapter.cache_salt if adapter is not None else None, stream=stream,
        )  # fmt: skip
        request.adapter = adapter
        try:
            if params.structured_output is not None:
                request.matcher = self._grammar_matchers().matcher_for(params.structured_output)
        except ValueError:
            self._release_adapter(request)
            raise
        self.scheduler.add_request(request)

    def _grammar_matchers(self) -> GrammarMatchers:
        """Built on the first constrained request (reading the tokenizer takes up to a second)."""
        if self.grammars is None:
            vocab = self.model.config.vocab_size
            self.grammars = GrammarMatchers.for_model(
                self.options.model, vocab, sorted(self.eos_token_ids), self.runner.kernels
            )
            if self.grammars is None:
                raise ValueError("this model directory has no tokenizer.json, so no structured output")
        return self.grammars

    def abort(self, request_ids: list[str]) -> list[CoreOutput]:
        """End requests now, freeing their KV blocks; unknown (already finished) ids are ignored."""
        outputs = []
        for request_id in request_ids:
            request = self.scheduler.requests.get(request_id)
            if request is not None:
                self._finish(request, RequestStatus.FINISHED_ABORTED)
                outputs.append(self._output(request, [], None))
        self.last_stats = StepStats(self.scheduler.stats())
        self.publish_kv_events()
        return outputs

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ---- the step ----------------------------------------------------------------------

    def step(self) -> list[CoreOutput]:
        start = time.perf_counter()
        scheduled = self.scheduler.schedule()
        outputs = self._run(scheduled) if scheduled.chunks else []
        self.last_stats = StepStats(
            self.scheduler.stats(), len(scheduled.chunks), scheduled.num_tokens, time.perf_counter() - start
        )
        return outputs  # its KV events wait for publish_kv_events()

    def _run(self, scheduled: SchedulerOutput) -> list[CoreOutput]:
        logits, prompt_rows = self.runner.execute(scheduled.chunks)
        for rows in prompt_rows:
            self._score_prompt(rows)
        sampling = [chunk.request for chunk in scheduled.chunks if chunk.samples]
        constrained = [row for row, request in enumerate(sampling) if request.matcher is not None]
        if constrained:  # the tokens each request's grammar allows next; the rest -inf (as vLLM masks)
            self.grammars.mask(logits, constrained, [sampling[row].matcher for row in constrained])
        sampled = self.sampler(logits, sampling) if sampling else []
        now = time.monotonic()
        for chunk in scheduled.chunks:
            chunk.request.num_computed_tokens += chunk.num_tokens
        outputs = []
        for request, token in zip(sampling, sampled, strict=True):
            request.append_output_token(token.token_id)
            if request.matcher is not None:
                request.matcher.consume_token(token.token_id)
            if token.logprobs is not None:
                request.logprobs.append(token.logprobs)
            if token.logprob is not None:
                request.score(token.logprob)
            times = request.times
            times.tokens.append(now)
            if times.first_token is None:
                times.first_token = now
            status = self._stop_status(request, token.token_id)
            if status is not None:
                self._finish(request, status)
            if request.stream or request.finished:
                outputs.append(self._output(request, [token.token_id], token.logprobs))
        return outputs

    def _finish(self, request: Request, status: RequestStatus) -> None:
        self.scheduler.finish(request, status)
        self.sampler.forget(request.request_id)
        self._release_adapter(request)

    def _release_adapter(self, request: Request) -> None:
        adapter: LoraAdapter | None = request.adapter
        if adapter is None:
            return
        request.adapter = None
        adapter.users -= 1
        if adapter.unloaded and adapter.users == 0:
            self.runner.remove_adapter(adapter)

    # ---- LoRA adapters (utility calls) --------------------------------------------------------

    def load_lora(self, name: str, path: str, replace: bool = False) -> dict:
        """Load a PEFT adapter under `name` (with `replace`, in place of the one of that name:
        its running requests finish with it, new ones get the new one); ValueError (a 400)
        naming what does not fit."""
        adapter, replaced = self.loras.load(name, path, replace)
        self.runner.add_adapter(adapter)
        if replaced is not None and replaced.users == 0:
            self.runner.remove_adapter(replaced)
        logger.info(
            "LoRA adapter %r loaded from %s (rank %d, %s)", name, path, adapter.rank, ", ".join(adapter.targets)
        )
        return {"name": name, "path": adapter.path, "rank": adapter.rank, "targets": list(adapter.targets)}

    def unload_lora(self, name: str) -> None:
        """New requests may no longer use it; requests running with it finish with it."""
        adapter = self.loras.unload(name)
        if adapter.users == 0:
            self.runner.remove_adapter(adapter)
        logger.info("LoRA adapter %r unloaded", name)

    def list_loras(self) -> dict[str, str]:
        return self.loras.listing()

    def _score_prompt(self, rows: PromptRows) -> None:
        """Append the logprobs of the prompt tokens these rows predict to their request, the
        logits made PROMPT_LOGITS_ROWS rows at a time (a 2,048-token chunk of a 150k vocabulary
        would otherwise hold 1.2 GB of them at once)."""
        request, first = rows.request, rows.first_position
        targets = request.prompt_token_ids[first + 1 : first + 1 + rows.hidden.shape[0]]
        for start in range(0, len(targets), PROMPT_LOGITS_ROWS):
            logits = self.runner.logits_of(rows.hidden[start : start + PROMPT_LOGITS_ROWS])
            entries, ranks = score_tokens(
                logits, targets[start : start + PROMPT_LOGITS_ROWS], request.params.prompt_logprobs
            )
            request.prompt_logprobs.extend(entries)
            request.prompt_ranks.extend(ranks)

    def _stop_status(self, request: Request, token_id: int) -> RequestStatus | None:
        params = request.params
        generated = len(request.output_token_ids)
        if request.matcher is not None and request.matcher.is_stopped():
            return RequestStatus.FINISHED_STOPPED  # the grammar is complete: nothing more may follow
        if generated >= params.min_tokens and (
            token_id in params.stop_token_ids or (not params.ignore_eos and token_id in request.eos_token_ids)
        ):
            return RequestStatus.FINISHED_STOPPED
        if (
            params.max_tokens is not None and generated >= params.max_tokens
        ) or request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _output(self, request: Request, new_token_ids: list[int], logprobs: dict | None) -> CoreOutput:
        """The step's delta for a streaming request; everything generated for one that does not."""
        finished = request.status.finished
        delta_logprobs = [logprobs] if logprobs is not None else None
        if not request.stream:
            new_token_ids, delta_logprobs = list(request.output_token_ids), (request.logprobs or None)
        # The prompt's logprobs travel once, with the caller's first news of the request.
        first_news = not request.stream or len(request.output_token_ids) == 1
        with_prompt = request.params.prompt_logprobs is not None and first_news and bool(new_token_ids)
        return CoreOutput(
            request_id=request.request_id,
            new_token_ids=new_token_ids,
            finish_reason=request.status.value if finished else None,
            logprobs=delta_logprobs,
            prompt_logprobs=request.prompt_logprobs if with_prompt else None,
            prompt_ranks=request.prompt_ranks if with_prompt else None,
            num_prompt_tokens=request.num_prompt_tokens,
            num_cached_tokens=request.num_cached_tokens,
            cumulative_logprob=request.cumulative_logprob,
            min_logprob=request.min_logprob,
            arrival_time=request.times.arrival,
            first_scheduled_time=request.times.first_scheduled,
            first_token_time=request.times.first_token,
            finished_time=request.times.finished,
        )

    def reset_prefix_cache(self) -> bool:
        reset = self.kv_cache.reset_prefix_cache()
        self.publish_kv_events()
        return reset
