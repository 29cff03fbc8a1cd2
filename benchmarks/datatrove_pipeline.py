"""The datatrove side of `ingest_vs_datatrove.py`: run in datatrove's own virtualenv, never in tokenworks'.

    .peers/datatrove/bin/python benchmarks/datatrove_pipeline.py CONFIG.json

`ingest_vs_datatrove.py` writes CONFIG.json and times this process end to end (interpreter start
included). The pipeline mirrors `tokenworks ingest` stage for stage:

  stage 1 (tasks = workers): JsonlReader -> normalise (NFC, control characters, whitespace)
          -> GopherQualityFilter -> GopherRepetitionFilter (each with an exclusion writer, as
          tokenworks writes rejected/<stage>.jsonl) -> JsonlWriter(filtered) -> MinhashDedupSignature
  stage 2 (tasks = bands): MinhashDedupBuckets
  stage 3 (1 task):        MinhashDedupCluster
  stage 4 (tasks = workers): JsonlReader(filtered) -> MinhashDedupFilter (exclusion writer: the ids
          it removes) -> JsonlWriter(output) [-> DocumentTokenizer with the shared tokenizer.json]

With `"pipeline": "warc"`, stage 1 reads a crawl instead, as FineWeb's first step does:
  WarcReader -> Trafilatura (favour_precision, deduplicate: datatrove's defaults) -> normalise
  -> Py3langidFilter (exclusion writer rejected/language) -> the Gopher filters and the rest as above.
Py3langidFilter stands in for datatrove's LanguageFilter, whose fastText model (lid.176 or
GlotLID) is downloaded from the Hugging Face hub on first use: nothing may be downloaded here.
It uses py3langid, the offline identifier (model inside the wheel) that `tokenworks ingest`
uses, with tokenworks' rule, so that both tools drop the same pages for the same reason.

Word tokenizer (the Gopher filters and MinHash shingles split text into words with it):
datatrove 0.10 maps English to `SpaCyTokenizer("en")`, i.e. `spacy.blank("en")`. A *blank* spaCy
pipeline ships inside the `spacy` wheel (a rule-based tokenizer: no model download), so even that
stock configuration works offline; NLTK's punkt, datatrove's older default, would need
`nltk.download()` and is not used. The filters take a `language` that may also be a WordTokenizer
instance, and the benchmark's default (`words="whitespace"`) passes `WhitespaceWords`: the words
tokenworks' quality filters measure (whitespace-separated, surrounding punctuation stripped). That
keeps the filters equivalent rule by rule, with the contract's thresholds, rather than merely
similar: with spaCy, punctuation becomes tokens of its own, which datatrove's Gopher quality filter
leaves out of the word count and mean length but counts in the symbol-ratio and words-with-a-letter
denominators. `words="spacy"` runs the stock tokenizer instead (about 2x slower end to end here).
For MinHash the choice hardly matters: datatrove first lower-cases the text and turns punctuation
into spaces (`simplify_text`), and either tokenizer then splits on whitespace, giving the same
5-word shingles as tokenworks' lower-cased \\w+ words (up to datatrove's digits-to-0 rule).

Output folders under WORKDIR: rejected/{language,quality,repetition,near_dedup}/ (one JSON line per
dropped document, with its id), filtered/, output/ (kept documents), tokens/ and logs/.
"""

from __future__ import annotations

import json
import re
import string
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

# tokenworks.data.normalize's rules, so that both tools filter and shingle the same text
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile(r"\r\n?|[\u2028\u2029\x0b\x0c\x85]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_TRAILING_SPACE = re.compile(r" +\n")
_BLANK_LINES = re.compile(r"\n{3,}")
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")


# tokenworks.data.quality's punctuation: stripped from both ends of each word
_PUNCTUATION = string.punctuation + "“”‘’«»…–—"


class WhitespaceWords(WordTokenizer):
    """Whitespace-separated words, surrounding punctuation stripped, punctuation-only tokens dropped:
    the words whose length and letters tokenworks' quality filters measure."""

    def __init__(self) -> None:
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        return [word for word in (token.strip(_PUNCTUATION) for token in text.split()) if word]

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _SENTENCE.finditer(text) if m.group().strip()]

    # one instance per process is enough; equal instances keep datatrove's lru_caches effective
    def __eq__(self, other: object) -> bool:
        return isinstance(other, WhitespaceWords)

    def __hash__(self) -> int:
        return hash(WhitespaceWords)


class Normalise(BaseFormatter):
    """tokenworks' normalise step: NFC, line breaks, control characters, spaces, blank lines."""

    name = "normalise"

    def format(self, text: str) -> str:
        text = unicodedata.normalize("NFC", text)
        text = _CONTROL.sub("", _LINE_BREAKS.sub("\n", text))
        text = _TRAILING_SPACE.sub("\n", _SPACES.sub(" ", text))
        return _BLANK_LINES.sub("\n\n", text).strip()


class Py3langidFilter(BaseFilter):
    """datatrove's LanguageFilter with py3langid, the identifier tokenworks uses, in place of fastText.

    Stock LanguageFilter downloads fastText's lid.176 model from the Hugging Face hub on first
    use, and this benchmark runs offline; py3langid ships its model inside the wheel. Like
    LanguageFilter it records `language` and `language_score` in the metadata. The rule is
    tokenworks': classify the first `sample_characters` of the normalised text, keep the
    document when the most likely language is wanted (no score threshold)."""

    name = "🌍 Language ID (py3langid)"
    _requires_dependencies: ClassVar[list] = ["py3langid"]

    def __init__(self, languages: list[str], sample_characters: int, exclusion_writer: JsonlWriter) -> None:
        super().__init__(exclusion_writer)
        self.languages, self.sample_characters = set(languages), sample_characters
        self._identifier = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._identifier is None:  # loaded in the task's process, not pickled to it
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        language, score = self._identifier.classify(doc.text[: self.sample_characters])
        doc.metadata["language"], doc.metadata["language_score"] = language, round(float(score), 4)
        return language in self.languages or (False, "language")


def warc_steps(config: dict, writer: Callable[[str], JsonlWriter]) -> tuple[list, list]:
    """(before normalise, after it): WarcReader -> Trafilatura, then Py3langidFilter."""
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    settings = config["trafilatura"]
    extract = [
        WarcReader(config["corpus"], glob_pattern="*.warc.gz"),
        # datatrove's defaults, as FineWeb runs it (include_comments=False is fixed inside);
        # a timeout above the default 1 s, so that a busy machine does not drop pages
        Trafilatura(
            favour_precision=settings["favor_precision"],
            deduplicate=settings["deduplicate"],
            timeout=config["extract_timeout"],
        ),
    ]
    language = Py3langidFilter(config["languages"], config["language_sample_characters"], writer("rejected/language"))
    return extract, [language]


def build(config: dict) -> list[LocalPipelineExecutor]:
    work = Path(config["workdir"])
    workers = int(config["workers"])
    language = WhitespaceWords() if config["words"] == "whitespace" else "en"
    minhash = MinhashConfig(
        n_grams=int(config["shingle_words"]),
        num_buckets=int(config["bands"]),
        hashes_per_bucket=int(config["rows"]),
        seed=int(config["seed"]),
        hash_config=HashConfig(precision=64, hash_fc="xxhash"),
    )

    def writer(name: str) -> JsonlWriter:
        return JsonlWriter(str(work / name), compression=None)

    reader_args = {"text_key": config["text_field"], "id_key": config["id_field"], "add_file_path": False}
    # The thresholds of tokenworks' rules, and nothing else: Gopher's bullet-line, stop-word,
    # duplicate-paragraph and duplicate-5..10-gram rules are off because tokenworks has none of them.
    # What still differs is how a few statistics are measured, not what they mean:
    # - top n-grams: datatrove compares (n-gram string incl. spaces x count) with the whole text's
    #   length, case-sensitively; tokenworks compares the n-gram's word characters x count with all
    #   word characters, lower-cased;
    # - duplicate lines: datatrove splits on runs of newlines, unstripped; tokenworks counts
    #   non-empty stripped lines. Ellipsis lines: datatrove's denominator has the blank lines too;
    # - words: punctuation-only tokens count in tokenworks' word total, not in datatrove's.
    # The benchmark prints how far the two sets of dropped documents agree.
    quality = GopherQualityFilter(
        min_doc_words=50,
        max_doc_words=100_000,
        min_avg_word_length=3,
        max_avg_word_length=10,
        max_symbol_word_ratio=0.1,
        max_bullet_lines_ratio=None,
        max_ellipsis_lines_ratio=0.3,
        max_non_alpha_words_ratio=0.8,
        min_stop_words=None,
        exclusion_writer=writer("rejected/quality"),
        language=language,
    )
    repetition = GopherRepetitionFilter(
        dup_line_frac=0.3,
        dup_para_frac=None,
        dup_line_char_frac=None,
        dup_para_char_frac=None,
        top_n_grams=((2, 0.20), (3, 0.18), (4, 0.16)),
        dup_n_grams=(),
        exclusion_writer=writer("rejected/repetition"),
        language=language,
    )
    read, identify = [JsonlReader(config["corpus"], glob_pattern="*.jsonl", **reader_args)], []
    if config.get("pipeline") == "warc":
        read, identify = warc_steps(config, writer)
    logs = work / "logs"
    stage1 = LocalPipelineExecutor(
        pipeline=[
            *read,
            Normalise(),
            *identify,
            quality,
            repetition,
            writer("filtered"),
            MinhashDedupSignature(output_folder=str(work / "signatures"), config=minhash, language=language),
        ],
        tasks=workers,
        workers=workers,
        logging_dir=str(logs / "1-signatures"),
    )
    stage2 = LocalPipelineExecutor(
        pipeline=[
            MinhashDedupBuckets(
                input_folder=str(work / "signatures"), output_folder=str(work / "buckets"), config=minhash
            )
        ],
        tasks=minhash.num_buckets,
        workers=workers,
        logging_dir=str(logs / "2-buckets"),
    )
    stage3 = LocalPipelineExecutor(
        pipeline=[
            MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=minhash)
        ],
        tasks=1,
        logging_dir=str(logs / "3-clusters"),
    )
    final = [
        JsonlReader(str(work / "filtered"), **reader_args),
        MinhashDedupFilter(input_folder=str(work / "remove"), exclusion_writer=writer("rejected/near_dedup")),
        writer("output"),
    ]
    if config.get("tokenizer"):
        from datatrove.pipeline.tokens import DocumentTokenizer

        final.append(
            DocumentTokenizer(
                output_folder=str(work / "tokens"),
                tokenizer_name_or_path=config["tokenizer"],
                eos_token=config.get("eos_token"),
                shuffle_documents=False,
            )
        )
    stage4 = LocalPipelineExecutor(pipeline=final, tasks=workers, workers=workers, logging_dir=str(logs / "4-filter"))
    return [stage1, stage2, stage3, stage4]


def main() -> int:
    config = json.loads(Path(sys.argv[1]).read_text())
    for stage in build(config):
        stage.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
