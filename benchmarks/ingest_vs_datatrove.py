"""Document ingestion: `tokenworks ingest` against Hugging Face datatrove, on one generated corpus.

    .venv/bin/python benchmarks/ingest_vs_datatrove.py [--documents 100000] [--repeats 3] [--workers 2]
    .venv/bin/python benchmarks/ingest_vs_datatrove.py --pipeline warc [--documents 20000] [--languages en,de]

Both tools read the same JSONL shards, apply the same Gopher-style quality filters and MinHash
near-dedup (5-word shingles, 20 bands x 5 rows, Jaccard 0.8) and write the kept documents as
token shards with one shared tokenizer.json. Each run is a fresh subprocess, timed end to end
(interpreter start included), with the same worker count and thread limits. The corpus is
synthetic English-like text with planted near-duplicates (and, to give precision something to
catch, planted near-misses below the threshold, and junk documents the filters must drop), so
dedup recall and precision are measured against known ground truth.

Goals it reports against (it asserts none): tokenworks >= 1.0x datatrove's documents/s on 2
cores, dedup recall >= 0.95 and precision >= 0.99; with --pipeline warc also extracted text
agreeing with trafilatura's own on >= 95% of pages.

Same work on both sides: the corpus is written as --workers JSONL files (datatrove's readers
split work by file, so one file would leave a task idle); tokenworks runs with --no-pii and
--tokenizer (datatrove has no PII step and must not be charged for tokenizer training), and
keeps its exact-dedup pass (a hash per document; datatrove has no equivalent in this pipeline).
datatrove normalises text with tokenworks' rules before filtering. One difference is by design
and shows in precision: datatrove treats every LSH candidate pair as a duplicate, while
tokenworks confirms each on the exact Jaccard of its shingles; with 20 bands x 5 rows the
banding's S-curve is centred near Jaccard (1/20)^(1/5) = 0.55, so the planted near-misses
(Jaccard 0.5-0.78) are what tells the two apart. Run with --near-misses 0 to leave them out.

--pipeline warc: a generated crawl instead (warc_corpus.py: gzipped WARC files of HTML pages in
four site layouts with menus, headers, footers, cookie banners and comments around the main
text; English-like, German and French pages; the same planted near-duplicates, near-misses and
junk as main text, the copies syndicated on other sites; pages with nothing to extract; robots.txt
and images). Both tools extract each page's main text, identify its language and keep
--languages, then run the stages above. "Documents" are the HTML pages. datatrove runs
WarcReader -> Trafilatura (its defaults, as FineWeb) -> normalise -> Py3langidFilter -> ...:
its stock LanguageFilter downloads a fastText model from the Hugging Face hub, which this
benchmark may not, so datatrove_pipeline.py gives it a filter on py3langid, the offline
identifier tokenworks uses, with tokenworks' rule (first 3,000 characters, top language wanted).
tokenworks extracts with its default extractor (or --html-extractor). After the timed runs
trafilatura's own `extract` of every page (warc_reference.py, datatrove's settings) is the
reference that each tool's text is compared with (warc_results.py says how); the report also
counts language-filter errors against the generator's truth, and the planted pairs that
extraction left below the Jaccard threshold (which no dedup can find). `tokenworks` runs the
checkout as it is at each run: the report names the last commit of tokenworks/data, and warns
when tokenworks/data changed during the runs.

Timings are wall clock on whatever else the machine is doing: the tools alternate run by run,
and each run line shows the 1-minute load average before it, so a busy machine is visible.

datatrove runs in its own virtualenv, `.peers/datatrove`, which `ensure_datatrove()` creates and
fills from PyPI on first use (datatrove plus orjson, xxhash, regex, tokenizers and spaCy: the
few extras its JSONL reader/writer, MinHash, word tokenizer and DocumentTokenizer import; and for
the WARC pipeline warcio, faust-cchardet, python-magic, trafilatura and py3langid; no model or
data download is needed, see benchmarks/datatrove_pipeline.py). The WARC crawl is generated and
trafilatura's reference run in that virtualenv too (it has warcio and trafilatura). When it
cannot be set up, the benchmark says why and measures tokenworks alone (JSONL only).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from machine import cpu_model
from synthetic_text import JUNK_KINDS, jaccard, make_copy, make_document, make_junk, make_vocabulary, render, shingles
from warc_results import SIMILARITY, PageFates, agreement, datatrove_fates, fidelity, read_reference, tokenworks_fates

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(__file__).resolve().parent
PEERS = ROOT / ".peers"
DATATROVE_VENV = PEERS / "datatrove"
DATATROVE_PYTHON = DATATROVE_VENV / "bin" / "python"
DATATROVE_SCRIPT = BENCHMARKS / "datatrove_pipeline.py"
# What datatrove's code paths used here import, and nothing else: orjson (JSONL reader and
# writer), xxhash (MinHash's default hash), regex (word_tokenizers), tokenizers
# (DocumentTokenizer), spaCy (the stock English word tokenizer; a blank pipeline, no download).
# The `io` and `processing` extras would add pyarrow, datasets, nltk, fasttext, trafilatura...
# xxhash < 4 as datatrove's `processing` extra pins it: xxhash 4's xxh64_intdigest refuses str,
# and MinhashDedupSignature passes str ("TypeError: Strings must be encoded before hashing").
# The WARC pipeline adds: warcio, faust-cchardet and python-magic (what WarcReader imports; magic
# needs the system's libmagic), trafilatura with lxml_html_clean (its jusText fallback imports
# lxml.html.clean, a separate package since lxml 5.2), and py3langid at tokenworks' version (the
# language filter, see datatrove_pipeline.py).
try:
    from importlib.metadata import PackageNotFoundError, version

    PY3LANGID = f"py3langid=={version('py3langid')}"
except PackageNotFoundError:  # tokenworks without language identification: take the newest
    PY3LANGID = "py3langid"
DATATROVE_REQUIREMENTS = [
    *("datatrove>=0.10,<0.11", "orjson", "xxhash<4", "regex", "tokenizers", "spacy"),
    *("warcio", "faust-cchardet", "python-magic", "trafilatura", "lxml_html_clean", PY3LANGID),
]
DATATROVE_PROBE = (
    "import datatrove, orjson, xxhash, regex, tokenizers, spacy; xxhash.xxh64_intdigest('probe'); "
    "import warcio, cchardet, magic, trafilatura, py3langid; "
    "from importlib.metadata import version; "
    f"assert '{PY3LANGID}'.endswith(('py3langid', '==' + version('py3langid'))), 'py3langid ' + version('py3langid'); "
    "print(version('datatrove'))"
)
TOKENWORKS = ROOT / ".venv" / "bin" / "tokenworks"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
GOALS = {"ratio": 1.0, "recall": 0.95, "precision": 0.99, "agreement": 0.95}
# The WARC pipeline: datatrove's Trafilatura step passes these to trafilatura.extract (its
# defaults, as FineWeb runs it), and the agreement check's reference passes the same.
TRAFILATURA = {"favor_precision": True, "include_comments": False, "deduplicate": True}
LANGUAGE_SAMPLE_CHARACTERS = 3000  # tokenworks.data.language classifies a document's first 3,000 characters
WARC_GENERATOR = BENCHMARKS / "warc_corpus.py"
WARC_REFERENCE = BENCHMARKS / "warc_reference.py"


# ---------------------------------------------------------------------------------------
# output helpers: rich when importable (it is in tokenworks' venv), plain text otherwise


try:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    # a log file gets the full table, not one squeezed into 80 columns
    console: Console | None = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
except ImportError:  # pragma: no cover - the benchmark's own venv has rich
    console = None


def say(message: str = "") -> None:
    if console is not None:
        console.print(message, soft_wrap=True)
    else:
        print(re.sub(r"\[/?[a-z ]+\]", "", message), flush=True)


class Counter:
    """A progress bar (rich) or a few percent lines (plain) for a loop of known length."""

    def __init__(self, description: str, total: int) -> None:
        self.description, self.total, self.done, self._last = description, total, 0, -1
        self._progress = None
        if console is not None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )

    def __enter__(self) -> Counter:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done)
        elif (percent := 100 * self.done // max(self.total, 1)) // 25 != self._last // 25:
            self._last = percent
            print(f"  {self.description}: {percent}%", flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


# ---------------------------------------------------------------------------------------
# datatrove's virtualenv


def ensure_datatrove() -> tuple[Path | None, str]:
    """(python, version) of a virtualenv with datatrove and what its pipeline here needs, or
    (None, why not). Creates `.peers/datatrove` and pip-installs into it on first use."""

    def probe() -> subprocess.CompletedProcess:
        return subprocess.run([str(DATATROVE_PYTHON), "-c", DATATROVE_PROBE], capture_output=True, text=True)

    if DATATROVE_PYTHON.exists() and (found := probe()).returncode == 0:
        return DATATROVE_PYTHON, found.stdout.strip()
    say(f"setting up datatrove in {DATATROVE_VENV.relative_to(ROOT)} (pip install {' '.join(DATATROVE_REQUIREMENTS)})")
    try:
        if not DATATROVE_PYTHON.exists():
            subprocess.run([sys.executable, "-m", "venv", str(DATATROVE_VENV)], check=True, capture_output=True)
        install = subprocess.run(
            [str(DATATROVE_PYTHON), "-m", "pip", "install", "--quiet", *DATATROVE_REQUIREMENTS],
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"could not create the virtualenv: {error}"
    if install.returncode != 0:
        lines = [line for line in install.stderr.splitlines() if line.strip() and "is ignored" not in line]
        return None, "pip install failed: " + " | ".join(lines[-3:])
    found = probe()
    if found.returncode != 0:
        return None, "datatrove installed but does not import: " + found.stderr.strip().splitlines()[-1]
    return DATATROVE_PYTHON, found.stdout.strip()


def tokenworks_commit() -> str:
    """The last commit of tokenworks/data (what ingest runs), with "+changes" when it has uncommitted
    edits ("?" outside git). Other parts of a shared checkout may move without changing it."""
    last = subprocess.run(
        ["git", "log", "-1", "--format=%h", "--", "tokenworks/data"], capture_output=True, text=True, cwd=ROOT
    )
    if last.returncode != 0 or not last.stdout.strip():
        return "?"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "tokenworks/data"], capture_output=True, text=True, cwd=ROOT
    )
    return last.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def tokenworks_available() -> tuple[bool, str]:
    """Whether `tokenworks ingest` exists, and the tokenworks version (or why not)."""
    if not TOKENWORKS.exists():
        return False, f"{TOKENWORKS} not found (run `make setup`)"
    found = subprocess.run([str(TOKENWORKS), "ingest", "--help"], capture_output=True, text=True)
    if found.returncode != 0:
        return False, "`tokenworks ingest` is not available: " + " ".join(found.stderr.split())[:200]
    version = subprocess.run([str(TOKENWORKS), "version"], capture_output=True, text=True).stdout.strip()
    return True, version.removeprefix("tokenworks ").strip() or "?"


# ---------------------------------------------------------------------------------------
# the JSONL corpus: synthetic_text's documents, planted near-duplicates, near-misses and junk


@dataclass
class Corpus:
    directory: Path
    ids: list[str]
    texts_sample: list[str]  # clean documents, to train the shared tokenizer on
    planted: dict[str, str] = field(default_factory=dict)  # near-duplicate id -> original id
    near_misses: dict[str, str] = field(default_factory=dict)  # below-threshold copy id -> original id
    junk: dict[str, str] = field(default_factory=dict)  # id -> which rule it breaks
    pair_jaccard: dict[str, float] = field(default_factory=dict)  # copy id -> true Jaccard with original
    pair_edits: dict[str, float] = field(default_factory=dict)  # copy id -> edited fraction of words
    dropped_pairs: int = 0  # copies that could not be brought to the wanted Jaccard, left out


def generate_corpus(
    directory: Path,
    documents: int,
    duplicate_fraction: float,
    near_miss_fraction: float,
    junk_fraction: float,
    shards: int,
    seed: int,
    shingle_words: int,
    threshold: float,
) -> Corpus:
    """`documents` JSONL lines in `shards` files, in one order that both tools read (files in
    name order, lines in file order). Every copy lies after its original, never next to it."""
    rng = np.random.default_rng(seed)
    vocabulary = make_vocabulary(rng, 4000)
    n_dups = round(documents * duplicate_fraction)
    n_misses = round(documents * near_miss_fraction)
    n_junk = round(documents * junk_fraction)
    n_base = documents - n_dups - n_misses
    if n_base - n_junk < n_dups + n_misses:
        raise SystemExit("too few clean documents to copy from: lower --duplicates/--near-misses/--junk")
    # Base documents in file order; copies are drawn from distinct clean originals in the first
    # 90%, so that each has room for its copy later in the file (one copy per original keeps
    # "the first of a cluster" unambiguous).
    is_junk = np.zeros(n_base, dtype=bool)
    is_junk[rng.choice(n_base, n_junk, replace=False)] = True
    clean = np.flatnonzero(~is_junk)
    eligible = clean[clean < max(int(n_base * 0.9), n_dups + n_misses + 1)]
    chosen = rng.choice(eligible, n_dups + n_misses, replace=False)
    copy_kind = {int(i): ("dup" if k < n_dups else "miss") for k, i in enumerate(chosen)}

    entries: list[tuple[float, str, str, str | None, float, float]] = []  # key, text, kind, original key...
    junk_kinds: list[str] = []
    texts_sample: list[str] = []
    dropped = 0
    with Counter("generating corpus", n_base) as counter:
        for position in range(n_base):
            if is_junk[position]:
                kind = JUNK_KINDS[int(rng.integers(len(JUNK_KINDS)))]
                junk_kinds.append(kind)
                entries.append((position, make_junk(rng, vocabulary, kind), "junk:" + kind, None, 0.0, 0.0))
                counter.advance()
                continue
            document = make_document(rng, vocabulary, int(rng.integers(100, 401)))
            text = render(document)
            entries.append((position, text, "base", None, 0.0, 0.0))
            if len(texts_sample) < 5000:
                texts_sample.append(text)
            if position in copy_kind:
                made = make_copy(rng, vocabulary, document, text, copy_kind[position], shingle_words, threshold)
                if made is None:
                    dropped += 1
                else:
                    copy_text, score, fraction = made
                    # after the original, never adjacent: uniform over the rest of the file
                    key = float(rng.uniform(position + 1.5, max(n_base - 0.5, position + 1.6)))
                    entries.append((key, copy_text, copy_kind[position], position, score, fraction))
            counter.advance()

    entries.sort(key=lambda entry: entry[0])
    width = len(str(len(entries)))
    ids = [f"doc-{i:0{width}d}" for i in range(len(entries))]
    id_of_position = {entry[0]: ids[i] for i, entry in enumerate(entries) if entry[3] is None}
    corpus = Corpus(directory, ids, texts_sample, dropped_pairs=dropped)
    for doc_id, (_, _, kind, original, score, fraction) in zip(ids, entries, strict=True):
        if kind.startswith("junk:"):
            corpus.junk[doc_id] = kind.removeprefix("junk:")
        elif original is not None:
            target = corpus.planted if kind == "dup" else corpus.near_misses
            target[doc_id] = id_of_position[original]
            corpus.pair_jaccard[doc_id] = score
            corpus.pair_edits[doc_id] = fraction

    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    per_shard = -(-len(entries) // shards)
    for shard in range(shards):
        rows = range(shard * per_shard, min((shard + 1) * per_shard, len(entries)))
        with open(directory / f"part-{shard:05d}.jsonl", "w", encoding="utf-8") as out:
            for i in rows:
                out.write(json.dumps({"id": ids[i], "text": entries[i][1]}, ensure_ascii=False) + "\n")
    return corpus


def train_tokenizer(texts: list[str], vocab_size: int, directory: Path) -> tuple[Path, str]:
    """One byte-level BPE tokenizer.json (trained by tokenworks) that both tools tokenize with."""
    from tokenworks.model import Tokenizer

    tokenizer = Tokenizer.train(texts, vocab_size)
    tokenizer.save(directory)
    return directory / "tokenizer.json", tokenizer.eos_token


# ---------------------------------------------------------------------------------------
# the WARC crawl: generated by warc_corpus.py in datatrove's virtualenv (it has warcio)


def generate_warc(args: argparse.Namespace, work: Path, shards: int, python: Path) -> tuple[Corpus, dict]:
    """(the crawl as a Corpus keyed by page URL, the generator's ground truth)."""
    config = {
        "directory": str(work / "corpus"),
        "pages": args.documents,
        "shards": shards,
        "seed": args.seed,
        "shingle_words": args.shingle_words,
        "jaccard": args.jaccard,
        "duplicates": args.duplicates,
        "near_misses": args.near_misses,
        "junk": args.junk,
    }
    path = work / "warc_config.json"
    path.write_text(json.dumps(config, indent=2))
    generated = subprocess.run([str(python), str(WARC_GENERATOR), str(path)], capture_output=True, text=True)
    if generated.returncode != 0:
        raise SystemExit(f"the WARC generator failed:\n{generated.stderr[-3000:]}")
    truth = json.loads((work / "ground_truth.json").read_text())
    texts_sample = json.loads((work / "tokenizer_sample.json").read_text())
    pages = truth["pages"]
    corpus = Corpus(Path(config["directory"]), [page["url"] for page in pages], texts_sample)
    corpus.dropped_pairs = truth["dropped_pairs"]
    for page in pages:
        if page["kind"] in ("dup", "miss"):
            (corpus.planted if page["kind"] == "dup" else corpus.near_misses)[page["url"]] = page["original"]
            corpus.pair_jaccard[page["url"]] = page["jaccard"]
        elif page["kind"].startswith("junk:"):
            corpus.junk[page["url"]] = page["kind"].removeprefix("junk:")
    return corpus, truth


def warc_reference(work: Path, corpus: Corpus, python: Path, workers: int) -> dict[str, str | None]:
    """trafilatura's own extract of every page, with TRAFILATURA's settings (not timed)."""
    settings, out = work / "trafilatura_settings.json", work / "reference.jsonl"
    settings.write_text(json.dumps(TRAFILATURA))
    command = [str(python), str(WARC_REFERENCE), str(corpus.directory), str(out), str(settings), str(workers)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"trafilatura's reference extraction failed:\n{done.stderr[-3000:]}")
    return read_reference(out)


def warc_scores(
    fates: PageFates, corpus: Corpus, truth: dict, languages: set[str], shingle_words: int, threshold: float
) -> dict[str, object]:
    """What the language filter and the Gopher rules did, against the generator's truth; and how
    many planted pairs extraction left below the threshold (furniture kept on one side of a pair
    lowers its Jaccard: dedup cannot find those, whatever it does)."""
    pages = truth["pages"]
    language_of = {page["url"]: page["language"] for page in pages}
    extracted = [url for url in language_of if url not in fates.no_text]
    wanted = [url for url in extracted if language_of[url] in languages]
    unwanted = [url for url in extracted if language_of[url] not in languages]
    survived_language = [url for url in extracted if url not in fates.language]
    junk = [url for url in survived_language if url in corpus.junk]
    clean = [url for url in survived_language if url not in corpus.junk]
    empty = {page["url"] for page in pages if page["kind"] == "empty"}
    pairs = [
        (copy, original) for copy, original in corpus.planted.items() if copy in fates.texts and original in fates.texts
    ]
    below = sum(
        jaccard(shingles(fates.texts[copy], shingle_words), shingles(fates.texts[original], shingle_words)) < threshold
        for copy, original in pairs
        if copy not in fates.before_dedup and original not in fates.before_dedup
    )
    return {
        "planted_pairs_below_threshold_after_extraction": below,
        "no_text": len(fates.no_text),
        "no_text_of_empty_pages": len(fates.no_text & empty),
        "language_wanted_dropped": sum(url in fates.language for url in wanted),
        "language_unwanted_kept": sum(url not in fates.language for url in unwanted),
        "language_errors": sum(url in fates.language for url in wanted)
        + sum(url not in fates.language for url in unwanted),
        "junk_removed_by_quality": sum(url in fates.quality for url in junk),
        "junk_reaching_quality": len(junk),
        "clean_removed_by_quality": sum(url in fates.quality for url in clean),
    }


# ---------------------------------------------------------------------------------------
# running the tools


@dataclass
class Run:
    seconds: float
    returncode: int
    log: Path
    cpu_seconds: float  # user + system of the whole process tree (nan where /proc is missing)


class TreeCpu:
    """CPU seconds a process and all its descendants used, sampled from /proc: on a shared machine
    wall time follows the other jobs' load, CPU time much less. A process's CPU time after its last
    sample (at most one interval) is missed; descendants that live shorter than one may be too."""

    TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, root: int) -> None:
        self.root = root
        self.last: dict[int, float] = {}  # pid -> CPU seconds at its last sample
        self.available = Path("/proc/self/stat").exists()

    def sample(self) -> None:
        if not self.available:
            return
        children: dict[int, list[int]] = {}
        used: dict[int, float] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:  # after the command's ")": state, ppid, ..., utime and stime at 11 and 12
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            pid = int(entry.name)
            children.setdefault(int(fields[1]), []).append(pid)
            used[pid] = (int(fields[11]) + int(fields[12])) / self.TICKS
        tree = [self.root]
        for pid in tree:
            tree.extend(children.get(pid, ()))
        self.last.update((pid, used[pid]) for pid in tree if pid in used)

    @property
    def seconds(self) -> float:
        return sum(self.last.values()) if self.available else float("nan")


def run_timed(command: list[str], env: dict[str, str], log: Path, label: str) -> Run:
    """Run `command` to completion (output to `log`), showing elapsed time: its wall-clock seconds and
    the CPU seconds of its process tree."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        cpu = TreeCpu(process.pid)
        status = console.status(f"{label} ...") if console is not None else contextlib.nullcontext()
        with status:
            polls = 0
            while process.poll() is None:
                if polls % 4 == 0:
                    cpu.sample()
                polls += 1
                time.sleep(0.05)
                if console is not None:
                    status.update(f"{label} ... {time.perf_counter() - start:.0f}s")
        seconds = time.perf_counter() - start
    return Run(seconds, process.returncode, log, cpu.seconds)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def read_jsonl(paths: Iterator[Path]) -> Iterator[dict]:
    for path in sorted(paths):
        with open(path, encoding="utf-8") as rows:
            for line in rows:
                if line.strip():
                    yield json.loads(line)


@dataclass
class Outcome:
    """What one tool did to the corpus: the ids it dropped, and why."""

    quality: set[str]  # dropped by quality filters (or any stage before dedup)
    flagged: set[str]  # dropped as a duplicate (exact or near)
    kept: int
    by_stage: dict[str, int]


def tokenworks_outcome(out: Path, total: int) -> Outcome:
    rejected = out / "rejected"
    quality: set[str] = set()
    flagged: set[str] = set()
    by_stage: dict[str, int] = {}
    for path in sorted(rejected.glob("*.jsonl")):
        stage = path.stem
        ids = {str(row["id"]) for row in read_jsonl(iter([path]))}
        by_stage[stage] = len(ids)
        (flagged if stage in ("near_dedup", "exact_dedup") or "dedup" in stage else quality).update(ids)
    kept = total - len(quality) - len(flagged)
    stats_path = out / "stats.json"
    if stats_path.exists():
        stats = json.loads(stats_path.read_text())
        kept = _kept_from_stats(stats, kept)
    return Outcome(quality, flagged, kept, by_stage)


def _kept_from_stats(stats: object, default: int) -> int:
    """The documents out of the last dedup stage in tokenworks' stats.json, when it says."""
    stages = stats.get("stages", stats) if isinstance(stats, dict) else stats
    if isinstance(stages, dict):
        stages = [{"stage": name, **value} for name, value in stages.items() if isinstance(value, dict)]
    if not isinstance(stages, list):
        return default
    kept = default
    for stage in stages:
        if isinstance(stage, dict) and "dedup" in str(stage.get("stage", stage.get("name", ""))):
            for key in ("documents_out", "out", "docs_out", "output"):
                if isinstance(stage.get(key), int):
                    kept = stage[key]
    return kept


def datatrove_outcome(out: Path) -> Outcome:
    def ids(folder: str) -> set[str]:
        return {str(row["id"]) for row in read_jsonl((out / folder).glob("*.jsonl"))}

    quality, repetition, flagged = ids("rejected/quality"), ids("rejected/repetition"), ids("rejected/near_dedup")
    kept = sum(1 for _ in read_jsonl((out / "output").glob("*.jsonl")))
    by_stage = {"gopher_quality": len(quality), "gopher_repetition": len(repetition), "minhash": len(flagged)}
    return Outcome(quality | repetition, flagged, kept, by_stage)


def stage_seconds(name: str, out: Path) -> dict[str, float]:
    """Where a tool's time went, as it reports it: tokenworks' stats.json (wall seconds per stage);
    datatrove's logs/*/stats.json (seconds per step, summed over its tasks; a step that wraps its
    whole input, like MinHash's signatures, includes the steps before it)."""
    if name == "tokenworks":
        stages = json.loads((out / "stats.json").read_text())["stages"]
        return {stage["stage"]: stage["seconds"] for stage in stages}
    seconds: dict[str, float] = {}
    for path in sorted((out / "logs").glob("*/stats.json")):
        for step in json.loads(path.read_text()):
            label = " ".join(re.sub(r"[^\w .:-]", "", step["name"]).split())
            seconds[f"{path.parent.name} {label}"] = round(step.get("time_stats", {}).get("total", 0.0), 3)
    return seconds


@dataclass
class ToolResult:
    name: str
    version: str
    seconds: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)  # 1-minute load average before each run
    cpu_seconds: list[float] = field(default_factory=list)  # CPU seconds of each run's process tree
    outcome: Outcome | None = None
    error: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)  # of the last run
    pages: PageFates | None = None  # the WARC pipeline: what happened to each page
    warc: dict[str, object] = field(default_factory=dict)  # the WARC pipeline: extraction and language figures

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def scores(outcome: Outcome, corpus: Corpus) -> dict[str, float | int]:
    planted = set(corpus.planted)
    originals = set(corpus.planted.values())
    survived = planted - outcome.quality
    hits = outcome.flagged & planted
    return {
        "planted": len(planted),
        "planted_survived_quality": len(survived),
        "planted_removed_by_quality": len(planted & outcome.quality),
        "originals_removed_by_quality": len(originals & outcome.quality),
        "flagged": len(outcome.flagged),
        "true_positives": len(hits),
        "recall": len(hits) / len(survived) if survived else float("nan"),
        "precision": len(hits) / len(outcome.flagged) if outcome.flagged else float("nan"),
        "false_positive_originals": len(outcome.flagged & originals),
        "false_positive_near_misses": len(outcome.flagged & set(corpus.near_misses)),
        "false_positive_other": len(outcome.flagged - planted - originals - set(corpus.near_misses)),
        "junk_removed_by_quality": len(set(corpus.junk) & outcome.quality),
        "clean_removed_by_quality": len(outcome.quality - set(corpus.junk)),
        "kept": outcome.kept,
    }


# ---------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--pipeline",
        choices=("jsonl", "warc"),
        default="jsonl",
        help="jsonl: text documents (default); warc: a generated crawl of HTML pages, through\n"
        "extraction and a language filter first",
    )
    parser.add_argument("--documents", type=int, help="documents (jsonl) or HTML pages (warc) (default 100000 / 20000)")
    parser.add_argument(
        "--languages",
        default="en,de",
        help="warc: the languages both tools keep (default en,de; the crawl has en, de, fr)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each tool; the median is reported (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes/tasks for each tool (default 2)")
    parser.add_argument(
        "--threads",
        type=int,
        help="thread limit per process for both tools: OpenMP/MKL/OpenBLAS/NumExpr and the Rust thread\n"
        "pool of Hugging Face tokenizers (default: --workers)",
    )
    parser.add_argument(
        "--html-extractor",
        help="warc: passed to `tokenworks ingest --html-extractor` (trafilatura or resiliparse);\n"
        "default: tokenworks' own default. datatrove always runs trafilatura.",
    )
    parser.add_argument("--shards", type=int, help="JSONL or WARC files the corpus is split into (default: --workers)")
    parser.add_argument("--duplicates", type=float, default=0.10, help="fraction planted near-duplicates (0.10)")
    parser.add_argument("--near-misses", type=float, default=0.02, help="fraction planted near-misses (0.02)")
    parser.add_argument("--junk", type=float, default=0.05, help="fraction of documents the filters must drop (0.05)")
    parser.add_argument("--shingle-words", type=int, default=5)
    parser.add_argument("--bands", type=int, default=20)
    parser.add_argument("--rows", type=int, default=5)
    parser.add_argument("--jaccard", type=float, default=0.8)
    parser.add_argument("--vocab-size", type=int, default=8192, help="shared tokenizer's vocabulary (default 8192)")
    parser.add_argument(
        "--datatrove-words",
        choices=("whitespace", "spacy"),
        default="whitespace",
        help="datatrove's word tokenizer: whitespace words as tokenworks counts them (default), or\n"
        "its stock English spaCy tokenizer (slower; punctuation becomes separate tokens)",
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=PEERS / "bench-ingest",
        help="scratch folder; its corpus/, runs/, logs/ and tokenizer/ are replaced on each run",
    )
    parser.add_argument("--skip-datatrove", action="store_true", help="measure tokenworks alone")
    parser.add_argument("--skip-tokenworks", action="store_true", help="measure datatrove alone")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.documents = args.documents or (20_000 if args.pipeline == "warc" else 100_000)
    shards = args.shards or args.workers
    args.threads = args.threads or args.workers
    work: Path = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("corpus", "runs", "logs", "tokenizer"):  # what an earlier run left; nothing else
        shutil.rmtree(work / stale, ignore_errors=True)

    # which tools can run
    tools: dict[str, ToolResult] = {}
    datatrove_python: Path | None = None
    if not args.skip_tokenworks:
        ok, detail = tokenworks_available()
        tools["tokenworks"] = ToolResult("tokenworks", detail if ok else "-", error=None if ok else detail)
    if not args.skip_datatrove:
        datatrove_python, detail = ensure_datatrove()
        tools["datatrove"] = ToolResult(
            "datatrove", detail if datatrove_python else "-", error=None if datatrove_python else detail
        )
    for tool in tools.values():
        if tool.error:
            say(f"[yellow]{tool.name} will not run:[/] {tool.error}")

    # corpus and tokenizer (not timed)
    started = time.perf_counter()
    warc_truth: dict = {}
    if args.pipeline == "warc":
        generator = datatrove_python or ensure_datatrove()[0]
        if generator is None:
            raise SystemExit("the WARC crawl is generated in datatrove's virtualenv (it has warcio), which is missing")
        corpus, warc_truth = generate_warc(args, work, shards, generator)
        say(
            f"crawl: {len(corpus.ids):,} HTML pages and {warc_truth['non_html']:,} other responses in {shards} "
            f"WARC files ({time.perf_counter() - started:.1f}s)"
        )
    else:
        corpus = generate_corpus(
            work / "corpus",
            args.documents,
            args.duplicates,
            args.near_misses,
            args.junk,
            shards,
            args.seed,
            args.shingle_words,
            args.jaccard,
        )
        say(f"corpus: {len(corpus.ids):,} documents in {shards} JSONL files ({time.perf_counter() - started:.1f}s)")
        truth = {k: getattr(corpus, k) for k in ("planted", "near_misses", "junk", "pair_jaccard", "pair_edits")}
        (work / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n")  # beside the corpus, not in it
    tokenizer_json, eos = train_tokenizer(corpus.texts_sample, args.vocab_size, work / "tokenizer")
    corpus.texts_sample = []  # no longer needed: free the memory
    languages = [code.strip() for code in args.languages.split(",") if code.strip()]

    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        env[name] = str(args.threads)
    env["RAYON_NUM_THREADS"] = str(args.threads)  # Hugging Face tokenizers' thread pool
    env["TOKENIZERS_PARALLELISM"] = "true" if args.threads > 1 else "false"
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(BENCHMARKS)
    thread_settings = {name: env[name] for name in (*THREAD_VARIABLES, "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")}

    def tokenworks_command(out: Path) -> list[str]:
        return [
            str(TOKENWORKS),
            "ingest",
            str(corpus.directory),
            "--out",
            str(out),
            "--workers",
            str(args.workers),
            "--text-field",
            "text",
            "--id-field",
            "id",
            "--tokenizer",
            str(tokenizer_json),
            "--no-pii",  # datatrove's pipeline has no PII step
            "--shingle-words",
            str(args.shingle_words),
            "--minhash-bands",
            str(args.bands),
            "--minhash-rows",
            str(args.rows),
            "--jaccard",
            str(args.jaccard),
            "--seed",
            str(args.seed),
            *(["--languages", ",".join(languages)] if args.pipeline == "warc" else []),
            *(["--html-extractor", args.html_extractor] if args.html_extractor else []),
        ]

    def datatrove_command(out: Path) -> list[str]:
        config = {
            "corpus": str(corpus.directory),
            "workdir": str(out),
            "workers": args.workers,
            "text_field": "text",
            "id_field": "id",
            "shingle_words": args.shingle_words,
            "bands": args.bands,
            "rows": args.rows,
            "seed": args.seed,
            "words": args.datatrove_words,
            "tokenizer": str(tokenizer_json),
            "eos_token": eos,
        }
        if args.pipeline == "warc":
            config |= {
                "pipeline": "warc",
                "trafilatura": TRAFILATURA,
                "extract_timeout": 10.0,
                "languages": languages,
                "language_sample_characters": LANGUAGE_SAMPLE_CHARACTERS,
            }
        path = out.parent / f"{out.name}.config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))
        return [str(datatrove_python), str(DATATROVE_SCRIPT), str(path)]

    commands = {"tokenworks": tokenworks_command, "datatrove": datatrove_command}
    outcomes = {"tokenworks": lambda out: tokenworks_outcome(out, len(corpus.ids)), "datatrove": datatrove_outcome}
    html_pages = set(corpus.ids)
    read_pages = {"tokenworks": tokenworks_fates, "datatrove": datatrove_fates}

    # `tokenworks` runs the checkout as it is at each run: note it, and whether it changed under the runs
    commit_at_start = tokenworks_commit()

    # the runs: alternate the tools, so that neither always runs on a warmer machine
    for repeat in range(1, args.repeats + 1):
        for name, tool in tools.items():
            if tool.error:
                continue
            out = work / "runs" / name
            if out.exists():
                shutil.rmtree(out)
            log = work / "logs" / f"{name}-{repeat}.log"
            # The machine may be shared: a busy one before a run makes its time suspect.
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            run = run_timed(commands[name](out), env, log, f"{name} run {repeat}/{args.repeats}")
            if run.returncode != 0:
                tool.error = f"exit status {run.returncode}; see {log}"
                say(f"[red]{name} failed[/] (exit {run.returncode}), last lines of {log}:\n{tail(log)}")
                continue
            tool.seconds.append(run.seconds)
            tool.loads.append(round(load, 2))
            tool.cpu_seconds.append(round(run.cpu_seconds, 1))
            busy = " [yellow](the machine was busy before this run)[/]" if load > 0.5 * (os.cpu_count() or 1) else ""
            say(
                f"{name} run {repeat}/{args.repeats}: {run.seconds:.1f}s "
                f"({len(corpus.ids) / run.seconds:,.0f} documents/s; {run.cpu_seconds:.0f} CPU seconds; "
                f"1-minute load before it {load:.2f}){busy}"
            )
            if repeat == args.repeats:  # the outputs of one run are enough: every run does the same
                try:
                    if args.pipeline == "warc":
                        tool.pages = read_pages[name](out, html_pages)
                        tool.outcome = Outcome(
                            tool.pages.before_dedup, tool.pages.flagged, tool.pages.kept, tool.pages.by_stage
                        )
                    else:
                        tool.outcome = outcomes[name](out)
                    tool.stage_seconds = stage_seconds(name, out)
                except (OSError, ValueError, KeyError) as error:
                    tool.error = f"could not read its output: {error!r}"

    if args.pipeline == "warc" and any(tool.pages for tool in tools.values()):
        started = time.perf_counter()
        reference = warc_reference(work, corpus, DATATROVE_PYTHON, args.workers)
        say(
            f"trafilatura's own extraction of every page, for the agreement check ({time.perf_counter() - started:.0f}s)"
        )
        main_texts = {page["url"]: page["main_text"] for page in warc_truth["pages"] if page["kind"] != "empty"}
        for tool in tools.values():
            if tool.pages is not None:
                tool.warc = {
                    "agreement_with_trafilatura": agreement(reference, tool.pages.texts, corpus.ids),
                    "equals_generated_main_text": fidelity(tool.pages.texts, main_texts),
                    **warc_scores(tool.pages, corpus, warc_truth, set(languages), args.shingle_words, args.jaccard),
                }
        reference_fidelity = fidelity({url: text or "" for url, text in reference.items()}, main_texts)
        say(f"  trafilatura's own text equals the generated main text on {reference_fidelity:.2%} of pages")

    if (commit_at_end := tokenworks_commit()) != commit_at_start:
        say(
            f"[yellow]tokenworks changed during the runs:[/] {commit_at_start} at the start, {commit_at_end} at the end"
        )
    crawl: dict[str, object] = {}
    if args.pipeline == "warc":
        pages = warc_truth["pages"]
        crawl = {
            "non_html_responses": warc_truth["non_html"],
            "page_languages": dict(collections.Counter(page["language"] for page in pages)),
            "languages_kept": languages,
            "tokenworks_html_extractor": args.html_extractor or "tokenworks' default",
            "pages_without_main_content": sum(page["kind"] == "empty" for page in pages),
            "windows_1252_pages": sum(page["encoding"] != "utf-8" for page in pages),
            "trafilatura": TRAFILATURA,
        }
    provenance = {"tokenworks_data_commit": commit_at_start, "tokenworks_data_commit_after_runs": commit_at_end}
    report(args, corpus, shards, tools, thread_settings, provenance, crawl)
    return 0 if all(tool.error is None for tool in tools.values()) else 1


def report(
    args: argparse.Namespace,
    corpus: Corpus,
    shards: int,
    tools: dict[str, ToolResult],
    threads: dict[str, str],
    provenance: dict[str, str],
    crawl: dict[str, object],
) -> None:
    """`crawl`: the WARC pipeline's parameters (empty for JSONL)."""
    total = len(corpus.ids)
    planted_scores = list(corpus.pair_jaccard[i] for i in corpus.planted)
    miss_scores = list(corpus.pair_jaccard[i] for i in corpus.near_misses)
    edits = [corpus.pair_edits[i] for i in corpus.planted if i in corpus.pair_edits]
    results: dict[str, object] = {
        "parameters": {
            "pipeline": args.pipeline,
            "documents": total,
            **crawl,
            "planted_near_duplicates": len(corpus.planted),
            "planted_jaccard_min_median_max": _spread(planted_scores),
            "planted_edit_fraction_min_median_max": _spread(edits),
            "planted_pairs_left_out": corpus.dropped_pairs,
            "near_misses": len(corpus.near_misses),
            "near_miss_jaccard_min_median_max": _spread(miss_scores),
            "junk": len(corpus.junk),
            "shards": shards,
            "shingle_words": args.shingle_words,
            "bands": args.bands,
            "rows": args.rows,
            "jaccard": args.jaccard,
            "workers": args.workers,
            "threads": threads,
            "repeats": args.repeats,
            "datatrove_words": args.datatrove_words,
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "versions": {name: tool.version for name, tool in tools.items()},
            **provenance,
            "seed": args.seed,
        },
        "tools": {},
    }
    params = results["parameters"]
    say()
    say("[bold]parameters[/]")
    for key, value in params.items():
        say(f"  {key}: {value}")

    rows = []
    for name, tool in tools.items():
        entry: dict[str, object] = {
            "version": tool.version,
            "seconds": [round(s, 3) for s in tool.seconds],
            "load_before_runs": tool.loads,
            "cpu_seconds": tool.cpu_seconds,
        }
        if tool.error:
            entry["error"] = tool.error
        if tool.seconds:
            entry["median_seconds"] = round(tool.median, 3)
            entry["documents_per_second"] = round(total / tool.median, 1)
            if tool.cpu_seconds and tool.cpu_seconds[0] == tool.cpu_seconds[0]:  # not nan
                entry["median_cpu_seconds"] = statistics.median(tool.cpu_seconds)
                entry["documents_per_cpu_second"] = round(total / entry["median_cpu_seconds"], 1)
        if tool.outcome is not None:
            entry["dedup"] = scores(tool.outcome, corpus)
            entry["rejected_by_stage"] = tool.outcome.by_stage
        if tool.stage_seconds:
            entry["stage_seconds"] = tool.stage_seconds
        if tool.warc:  # what reached the Gopher rules differs from the JSONL corpus: the WARC figures count it
            for key in ("junk_removed_by_quality", "clean_removed_by_quality"):
                entry["dedup"].pop(key, None)
            entry["warc"] = tool.warc
        results["tools"][name] = entry
        rows.append((name, entry))

    quality_sets = {name: tool.outcome.quality for name, tool in tools.items() if tool.outcome is not None}
    if len(quality_sets) == 2:
        tw, dt = quality_sets.get("tokenworks", set()), quality_sets.get("datatrove", set())
        agreement = {"both": len(tw & dt), "tokenworks_only": len(tw - dt), "datatrove_only": len(dt - tw)}
        results["quality_filter_agreement"] = agreement
        say(f"  quality filters, documents dropped: {agreement}")
    for name, entry in rows:
        if "warc" in entry:
            say(f"  {name} extraction and language: {entry['warc']}")
        if "dedup" in entry:
            say(f"  {name} dedup detail: {entry['dedup']}")
            say(f"  {name} rejected by stage: {entry['rejected_by_stage']}")
        if "stage_seconds" in entry:
            say(f"  {name} seconds by stage (last run): {entry['stage_seconds']}")
        if entry.get("seconds"):
            say(
                f"  {name} seconds per run: {entry['seconds']} (1-minute load before each: {entry['load_before_runs']}; "
                f"CPU seconds: {entry['cpu_seconds']})"
            )

    speed = {name: entry.get("documents_per_second") for name, entry in rows}
    ratio = speed["tokenworks"] / speed["datatrove"] if speed.get("tokenworks") and speed.get("datatrove") else None
    results["ratio_tokenworks_over_datatrove"] = round(ratio, 3) if ratio else None
    per_cpu = {name: entry.get("documents_per_cpu_second") for name, entry in rows}
    if per_cpu.get("tokenworks") and per_cpu.get("datatrove"):
        cpu_ratio = per_cpu["tokenworks"] / per_cpu["datatrove"]
        results["cpu_ratio_tokenworks_over_datatrove"] = round(cpu_ratio, 3)
        say(
            f"  documents per CPU second: tokenworks {per_cpu['tokenworks']:,.1f}, datatrove {per_cpu['datatrove']:,.1f} "
            f"({cpu_ratio:.2f}x; less sensitive than wall time to other jobs on the machine)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        say(f"  results written to {args.json}")

    headers = (
        "tool",
        "documents/s (median)",
        "seconds (median)",
        "CPU seconds (median)",
        "recall",
        "precision",
        "near-misses flagged",
        "kept documents",
        "vs datatrove",
    )
    if crawl:
        headers = (*headers[:4], "agrees with trafilatura", "exact", "language errors", *headers[4:])
    table_rows = []
    for name, entry in rows:
        dedup = entry.get("dedup", {})
        warc = entry.get("warc", {})
        agreed = warc.get("agreement_with_trafilatura", {})
        table_rows.append(
            (
                f"{name} {entry['version']}",
                f"{entry['documents_per_second']:,.0f}" if "documents_per_second" in entry else "-",
                f"{entry['median_seconds']:.1f}" if "median_seconds" in entry else "-",
                f"{entry['median_cpu_seconds']:.0f}" if "median_cpu_seconds" in entry else "-",
                *(
                    (
                        f"{agreed['agree']:.2%}" if agreed else "-",
                        f"{agreed['exact']:.2%}" if agreed else "-",
                        str(warc.get("language_errors", "-")),
                    )
                    if crawl
                    else ()
                ),
                _fmt(dedup.get("recall")),
                _fmt(dedup.get("precision")),
                f"{dedup['false_positive_near_misses']}/{len(corpus.near_misses)}" if dedup else "-",
                f"{dedup['kept']:,}" if "kept" in dedup else "-",
                (f"{ratio:.2f}x" if ratio else "-") if name == "tokenworks" else ("1.00x" if ratio else "-"),
            )
        )
    caption = (
        f"{total:,} {'HTML pages' if crawl else 'documents'}, {args.workers} workers, {args.threads} thread(s) each, "
        f"median of {args.repeats}; goals: tokenworks >= {GOALS['ratio']:.1f}x datatrove, recall >= {GOALS['recall']}, "
        f"precision >= {GOALS['precision']}"
    )
    if crawl:
        caption += (
            f", agreement >= {GOALS['agreement']:.0%} (a page agrees when its words' similarity to trafilatura's "
            f"own text is >= {SIMILARITY})"
        )
    say()
    if console is not None:
        table = Table(title="document ingestion: tokenworks vs datatrove", caption=caption)
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i == 0 else "right")
        for row in table_rows:
            table.add_row(*row)
        console.print(table)
    else:
        widths = [max(len(h), *(len(r[i]) for r in table_rows)) for i, h in enumerate(headers)]
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        for row in table_rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        print(caption)


def _spread(values: list[float]) -> list[float] | None:
    return [round(min(values), 3), round(statistics.median(values), 3), round(max(values), 3)] if values else None


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) and value == value else "-"


if __name__ == "__main__":
    sys.exit(main())
