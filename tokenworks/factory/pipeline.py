"""`tokenworks factory`: ingest -> model -> checkpoint -> tokens.

The corpus is curated by the real data stage (`tokenworks ingest`, into WORKDIR/data);
the model is still freshly initialised rather than trained, until the training, serving
and benchmark stages land. Every artifact is a plain file under the work directory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tokenworks.data.pipeline import IngestOptions, run_ingest
from tokenworks.errors import ConfigError
from tokenworks.model import CausalLM, Tokenizer, load_model, preset_config, save_model
from tokenworks.model.generate import generate_tokens
from tokenworks.model.tokenizer import IM_END

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class FactoryOptions:
    workdir: Path = Path("factory")
    preset: str = "tiny"
    vocab_size: int = 8192
    max_documents: int | None = None  # None: the whole default corpus
    workers: int = 2
    prompt: str = "The Python language"
    max_new_tokens: int = 32
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: object) -> FactoryOptions:
        """A run of a few seconds: the smallest model on part of the corpus."""
        return cls(**{"preset": "nano", "vocab_size": 1024, "max_documents": 150, **overrides})


@dataclass(slots=True)
class FactoryResult:
    documents_read: int
    documents: int  # after curation
    characters: int
    corpus_tokens: int
    vocab_size: int
    parameters: int
    checkpoint: Path
    prompt: str
    continuation: str
    continuation_ids: list[int]
    seconds: dict[str, float] = field(default_factory=dict)


@contextmanager
def _log_step(description: str) -> Iterator[None]:
    logger.info("%s", description)
    yield


def run_factory(
    options: FactoryOptions, step: Callable[[str], AbstractContextManager[None]] = _log_step
) -> FactoryResult:
    """Run every stage in order; `step(description)` wraps each one (the CLI shows progress)."""
    if options.max_new_tokens < 1:
        raise ConfigError("max_new_tokens must be at least 1")
    if not options.prompt:
        raise ConfigError("the prompt must not be empty")
    seconds: dict[str, float] = {}
    checkpoint = options.workdir / "model"

    with step("Curating the default corpus: Python's own documentation"), _timed(seconds, "ingest"):
        ingest = IngestOptions(
            out=options.workdir / "data",
            workers=options.workers,
            vocab_size=options.vocab_size,
            limit=options.max_documents,
        )
        curated = run_ingest(ingest)
        tokenizer = Tokenizer.load(curated.out / "tokenizer")

    with step(f"Initialising the {options.preset!r} model"), _timed(seconds, "model"):
        config = preset_config(
            options.preset,
            tokenizer.vocab_size,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = CausalLM(config).init_weights(seed=options.seed)

    with step(f"Saving the checkpoint to {checkpoint}"), _timed(seconds, "checkpoint"):
        stop_ids = [tokenizer.eos_token_id, tokenizer.token_to_id(IM_END)]
        save_model(model, checkpoint, generation_config={"eos_token_id": stop_ids})
        tokenizer.save(checkpoint)

    with step("Generating a continuation from the saved checkpoint"), _timed(seconds, "generate"):
        # Reload from disk so the continuation proves the checkpoint, not the object in memory.
        reloaded, reloaded_tokenizer = load_model(checkpoint), Tokenizer.load(checkpoint)
        prompt_ids = reloaded_tokenizer.encode(options.prompt)
        new_ids = list(generate_tokens(reloaded, prompt_ids, options.max_new_tokens, stop_token_ids=stop_ids))
        continuation = reloaded_tokenizer.decode(new_ids, skip_special_tokens=True)

    shards = curated.manifest["shards"]
    return FactoryResult(
        documents_read=curated.stages[0].documents_out,
        documents=curated.stages[-1].documents_out,
        characters=curated.stages[-1].characters_out,
        corpus_tokens=sum(shards["tokens"].values()),
        vocab_size=tokenizer.vocab_size,
        parameters=config.num_parameters(),
        checkpoint=checkpoint,
        prompt=options.prompt,
        continuation=continuation,
        continuation_ids=new_ids,
        seconds=seconds,
    )


@contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start
