"""`tokenworks ingest`: documents in, curated, deduplicated, tokenized shards out.

Six stages, each resumable on its own (see workspace.py):
    read       sources -> documents (unreadable files rejected with a reason)
    clean      normalise, quality filters, PII redaction
    dedup      exact (text hash), then near (MinHash LSH); the first of each group is kept
    split      deterministic train/validation split by document id
    tokenizer  train a byte-level BPE on the train split, or take a given tokenizer.json
    shards     token ids written as memory-mappable shards, and manifest.json
Every stage's key hashes its input's key with its own parameters, so changing an input
file reruns everything, and changing, say, the vocabulary size reruns only the last two.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tokenworks.data.clean import CleanSettings, clean_documents
from tokenworks.data.dedup import exact_duplicates, near_duplicates
from tokenworks.data.executor import Executor, LocalExecutor
from tokenworks.data.manifest import TOKENIZER_DIR, build_manifest, input_files, python_docs_input
from tokenworks.data.minhash import MinHashParameters
from tokenworks.data.python_docs import SOURCE as PYTHON_DOCS
from tokenworks.data.quality import PYTHON_DOCS_RELAXED, QualityThresholds
from tokenworks.data.readers import discover_files, python_docs_records, read_files
from tokenworks.data.readers.main_content import check_html_extractor
from tokenworks.data.records import Record
from tokenworks.data.shards import MANIFEST_NAME, SHARDS_DIR, ShardWriter, token_dtype
from tokenworks.data.stats import StageStats, characters, languages_of
from tokenworks.data.workspace import Workspace
from tokenworks.errors import ConfigError, TokenworksError

logger = logging.getLogger(__name__)

STAGES = ("read", "clean", "dedup", "split", "tokenizer", "shards")


class IngestError(TokenworksError):
    """The ingest could not produce data (for example, every document was dropped)."""


@dataclass(slots=True)
class IngestOptions:
    sources: list[str] = field(default_factory=lambda: [PYTHON_DOCS])
    out: Path = Path("data")
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    executor: str = "local"
    text_field: str = "text"
    id_field: str = "id"
    html_extractor: str = "trafilatura"  # main content of HTML pages: trafilatura (FineWeb's) or resiliparse
    limit: int | None = None  # keep only the first N documents read (a quick look at a big corpus)
    quality: bool = True
    quality_overrides: dict[str, Any] = field(default_factory=dict)  # for every source
    # Per source (as named on the command line), applied over the global thresholds.
    source_quality: dict[str, dict[str, Any]] = field(default_factory=lambda: {PYTHON_DOCS: PYTHON_DOCS_RELAXED})
    redact_pii: bool = True
    languages: list[str] | None = None  # keep only documents in these languages (ISO 639 codes); None: all
    exact_dedup: bool = True
    near_dedup: bool = True
    minhash: MinHashParameters = field(default_factory=MinHashParameters)
    validation_fraction: float = 0.05
    seed: int = 0
    vocab_size: int = 8192
    tokenizer: Path | None = None  # a tokenizer.json (or directory) to use instead of training one
    shard_tokens: int = 50_000_000

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("give at least one source")
        check_html_extractor(self.html_extractor)
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"validation fraction must be in [0, 1), got {self.validation_fraction}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be at least 1, got {self.limit}")
        if self.shard_tokens < 1:
            raise ConfigError("shard_tokens must be positive")
        if not 0.0 < self.minhash.jaccard_threshold <= 1.0:
            raise ConfigError(f"Jaccard threshold must be in (0, 1], got {self.minhash.jaccard_threshold}")
        if min(self.minhash.bands, self.minhash.rows, self.minhash.shingle_words) < 1:
            raise ConfigError("bands, rows and shingle words must be at least 1")
        self.clean_settings()  # unknown or malformed thresholds fail here, before any work
        if self.languages is not None:
            _check_languages(self.languages)

    def clean_settings(self) -> CleanSettings:
        languages = tuple(self.languages) if self.languages is not None else None
        if not self.quality:
            return CleanSettings(thresholds=None, redact=self.redact_pii, languages=languages)
        base = QualityThresholds().with_overrides(self.quality_overrides)
        by_source = {source: base.with_overrides(overrides) for source, overrides in self.source_quality.items()}
        return CleanSettings(thresholds=base, by_source=by_source, redact=self.redact_pii, languages=languages)

    def parameters(self) -> dict[str, Any]:
        """What determines the output (not where it goes, nor how many workers make it)."""
        values = asdict(self)
        for name in ("out", "workers", "executor"):
            values.pop(name)
        values["tokenizer"] = str(self.tokenizer) if self.tokenizer else None
        return values


@dataclass(slots=True)
class IngestResult:
    out: Path
    stages: list[StageStats]
    manifest: dict[str, Any]


class Progress:
    """How a caller watches the work: `stage(name, total)` gives a callback to advance by n."""

    def stage(self, name: str, total: int | None) -> AbstractContextManager[Callable[[int], None]]:
        return _silent_stage()


@contextmanager
def _silent_stage() -> Iterator[Callable[[int], None]]:
    yield lambda n: None


def make_executor(name: str, workers: int, batch_size: int = 256) -> Executor:
    """The executor `--executor` names: `local` (worker processes) or `ray` (Ray Data, imported only when asked)."""
    if name == "local":
        return LocalExecutor(workers=workers, batch_size=batch_size)
    if name == "ray":
        from tokenworks.data.ray_executor import RayExecutor

        return RayExecutor(workers=workers, batch_size=batch_size)
    raise ConfigError(f"unknown executor {name!r}; use 'local' or 'ray'")


def run_ingest(options: IngestOptions, progress: Progress | None = None) -> IngestResult:
    options.validate()
    progress = progress or Progress()
    workspace = Workspace(Path(options.out))
    executor = make_executor(options.executor, options.workers)
    try:
        return _Ingest(options, workspace, executor, progress).run()
    finally:
        executor.close()


class _Ingest:
    """One run: walks the stages, skipping completed ones, carrying documents between them."""

    def __init__(self, options: IngestOptions, workspace: Workspace, executor: Executor, progress: Progress) -> None:
        self.options = options
        self.workspace = workspace
        self.executor = executor
        self.progress = progress
        self.stats: list[StageStats] = []
        self.inputs: list[dict[str, Any]] = []

    def run(self) -> IngestResult:
        files = discover_files(self.options.sources)
        builtin = [python_docs_records()] if PYTHON_DOCS in self.options.sources else []
        self.inputs = input_files(files) + [python_docs_input(records) for records in builtin]
        o = self.options
        key = _hash({"inputs": self.inputs, "fields": [o.text_field, o.id_field], "limit": o.limit})
        documents: list[Record] | None = None
        for stage in STAGES:
            key = _hash({"previous": key, "stage": stage, "parameters": self._stage_parameters(stage)})
            done = self.workspace.completed(stage, key)
            if done is not None:
                logger.info("stage %s is complete for these inputs; skipping it", stage)
                self.stats.append(StageStats(**{**done, "resumed": True}))
                documents = None  # the next stage that runs loads this stage's saved output
                continue
            if documents is None and stage != "read":
                documents = self._load_output_of(STAGES[STAGES.index(stage) - 1])
            start = time.perf_counter()
            documents, stats = getattr(self, f"_{stage}")(documents, files, builtin)
            stats.seconds = round(time.perf_counter() - start, 3)
            if stage in ("read", "clean", "dedup", "split"):
                self.workspace.save_documents(stage, documents)
            self.workspace.mark_completed(stage, key, asdict(stats))
            self.stats.append(stats)
        manifest = json.loads((self.workspace.out / MANIFEST_NAME).read_text())
        stats_file = {"stages": [asdict(s) for s in self.stats]}
        (self.workspace.out / "stats.json").write_text(json.dumps(stats_file, indent=2) + "\n")
        return IngestResult(self.workspace.out, self.stats, manifest)

    def _stage_parameters(self, stage: str) -> Any:
        o = self.options
        if stage == "read":
            return {"html_extractor": o.html_extractor}
        if stage == "clean":
            return {"clean": repr(o.clean_settings())}
        if stage == "dedup":
            return {"exact": o.exact_dedup, "near": o.near_dedup and asdict(o.minhash)}
        if stage == "split":
            return {"fraction": o.validation_fraction, "seed": o.seed}
        if stage == "tokenizer":
            given = _given_tokenizer_file(o.tokenizer) if o.tokenizer else None
            return {"vocab_size": o.vocab_size, "given": given and _file_digest(given)}
        if stage == "shards":
            return {"shard_tokens": o.shard_tokens}
        return None

    def _load_output_of(self, stage: str) -> list[Record] | None:
        if stage == "tokenizer":  # the shards stage reads the split documents, not the tokenizer
            return self.workspace.load_documents("split")
        return self.workspace.load_documents(stage)

    # ---- the stages: (documents in, ...) -> (documents out, stats) ------------------------

    def _read(self, _: None, files: list[Record], builtin: list[list[Record]]) -> tuple[list[Record], StageStats]:
        o = self.options
        records = [record for group in builtin for record in group]
        with self.progress.stage("read", len(files)) as advance:
            records += self.executor.map_batches(
                partial(read_files, text_field=o.text_field, id_field=o.id_field, html_extractor=o.html_extractor),
                files,
                advance,
                batch_size=read_batch_size(len(files), self.options.workers),
            )
        kept, dropped = self._file_rejections(records, ("read",))
        if self.options.limit is not None:
            kept = kept[: self.options.limit]
        inputs = len(files) + sum(map(len, builtin))  # files, and documents of the built-in corpus
        stats = StageStats("read", inputs, len(kept), characters(records), characters(kept), dropped=dropped)
        self._require_documents(kept, "read")
        return kept, stats

    def _clean(self, documents: list[Record], *_: Any) -> tuple[list[Record], StageStats]:
        with self.progress.stage("clean", len(documents)) as advance:
            settings = self.options.clean_settings()
            cleaned = self.executor.map_batches(partial(clean_documents, settings=settings), documents, advance)
        kept, dropped = self._file_rejections(cleaned, ("normalize", "language", "quality"))
        self._require_documents(kept, "clean")
        stats = StageStats.of("clean", documents, kept, dropped)
        stats.languages = languages_of(kept)
        return kept, stats

    def _dedup(self, documents: list[Record], *_: Any) -> tuple[list[Record], StageStats]:
        kept, dropped = documents, {}
        if self.options.exact_dedup:
            kept, exact = self._file_rejections(exact_duplicates(kept), ("exact_dedup",))
            dropped.update(exact)
        if self.options.near_dedup:
            with self.progress.stage("dedup", len(kept)) as advance:
                marked = near_duplicates(kept, self.options.minhash, self.executor, advance)
            kept, near = self._file_rejections(marked, ("near_dedup",))
            dropped.update(near)
        return kept, StageStats.of("dedup", documents, kept, dropped)

    def _split(self, documents: list[Record], *_: Any) -> tuple[list[Record], StageStats]:
        fraction, seed = self.options.validation_fraction, self.options.seed
        out = [{**record, "split": split_of(record["id"], fraction, seed)} for record in documents]
        if documents and all(record["split"] == "validation" for record in out):
            out[0]["split"] = "train"  # a corpus must train on something, however small
        counts = Counter(record["split"] for record in out)
        stats = StageStats.of("split", documents, out, {})
        stats.dropped = {f"to {name}": counts[name] for name in ("train", "validation")}
        return out, stats

    def _tokenizer(self, documents: list[Record], *_: Any) -> tuple[list[Record], StageStats]:
        from tokenworks.model.tokenizer import Tokenizer

        directory = self.workspace.out / TOKENIZER_DIR
        if self.options.tokenizer:
            given = _given_tokenizer_file(self.options.tokenizer)
            tokenizer = Tokenizer.load(self.options.tokenizer)
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            shutil.copy(given, directory / "tokenizer.json")
            tokenizer.save(directory)
        else:
            with self.progress.stage("tokenizer", None):
                train = [record["text"] for record in documents if record["split"] == "train"]
                Tokenizer.train(train, vocab_size=self.options.vocab_size).save(directory)
        return documents, StageStats.of("tokenizer", documents, documents, {})

    def _shards(self, documents: list[Record], *_: Any) -> tuple[list[Record], StageStats]:
        from tokenworks.model.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(self.workspace.out / TOKENIZER_DIR)
        directory = self.workspace.out / SHARDS_DIR
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir()
        dtype = token_dtype(tokenizer.vocab_size)
        writers = {
            name: ShardWriter(directory, name, dtype, self.options.shard_tokens) for name in ("train", "validation")
        }
        eos = tokenizer.eos_token_id
        with self.progress.stage("shards", len(documents)) as advance:
            for start in range(0, len(documents), 1024):
                batch = documents[start : start + 1024]
                for record, ids in zip(batch, tokenizer.encode_batch([r["text"] for r in batch]), strict=True):
                    writers[record["split"]].add([*ids, eos])
                advance(len(batch))
        shards = {name: writer.close() for name, writer in writers.items()}
        stats = StageStats.of("shards", documents, documents, {})
        stats.tokens_out = sum(info.tokens for infos in shards.values() for info in infos)
        manifest = build_manifest(
            self.options.parameters(), self.workspace.out, self.inputs, tokenizer, dtype, shards, [*self.stats, stats]
        )
        (self.workspace.out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return documents, stats

    # ---- helpers --------------------------------------------------------------------------

    def _file_rejections(self, records: list[Record], stages: tuple[str, ...]) -> tuple[list[Record], dict[str, int]]:
        """Split kept from rejected records; (re)write rejected/<stage>.jsonl for each of `stages`."""
        kept = [record for record in records if "rejected" not in record]
        by_stage: dict[str, list[Record]] = {stage: [] for stage in stages}
        for record in records:
            if "rejected" in record:
                by_stage.setdefault(record["rejected"]["stage"], []).append(record)
        for stage, rejected in by_stage.items():
            self.workspace.write_rejected(stage, rejected)
        return kept, {stage: len(rejected) for stage, rejected in by_stage.items()}

    def _require_documents(self, kept: list[Record], stage: str) -> None:
        if kept:
            return
        rejected = sorted(self.workspace.rejected.glob("*.jsonl"))
        where = ", ".join(str(path) for path in rejected) or "nowhere"
        raise IngestError(
            f"no documents left after the {stage} stage; the reasons are in {where}. "
            "Check the sources, or relax the quality thresholds with --quality NAME=VALUE."
        )


def read_batch_size(files: int, workers: int) -> int:
    """Files per read batch: at least 4 batches a worker, so that a few large files (WARC
    shards, archives) spread over the workers instead of landing in one batch; at most 256,
    as every other stage, so that many small files do not pay a task each."""
    return max(1, min(256, files // (4 * workers)))


def split_of(document_id: str, validation_fraction: float, seed: int) -> str:
    """'train' or 'validation', from a hash of the id: stable across runs, orders and machines."""
    digest = hashlib.sha256(f"{seed}:{document_id}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < validation_fraction else "train"


def _check_languages(languages: list[str]) -> None:
    from tokenworks.data.language import known_languages

    if not languages:
        raise ConfigError("--languages needs at least one language code, such as en or en,de")
    known = known_languages()
    unknown = [language for language in languages if language not in known]
    if unknown:
        raise ConfigError(f"unknown language code {', '.join(unknown)}; known: {', '.join(known)}")


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _given_tokenizer_file(path: Path) -> Path:
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"tokenizer {file} not found")
    return file


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
