"""manifest.json: what went in, what came out, and everything that decided it.

Identical inputs and parameters give an identical manifest, byte for byte: it holds
hashes, counts and parameters, never times, paths of the machine or worker counts.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenworks.data.python_docs import SOURCE as PYTHON_DOCS
from tokenworks.data.readers import file_sha256
from tokenworks.data.records import Record
from tokenworks.data.shards import SHARDS_DIR, ShardInfo
from tokenworks.data.stats import StageStats

if TYPE_CHECKING:  # the tokenizer loads `tokenizers`; only its type is named here
    from tokenworks.model.tokenizer import Tokenizer

MANIFEST_VERSION = 1
TOKENIZER_DIR = "tokenizer"  # beside shards/ in the ingest's output directory


def input_files(files: list[Record]) -> list[dict[str, Any]]:
    """Each input file with its size and sha256, in discovery order."""
    return [
        {
            "path": file["path"],
            "source": file["source"],
            "bytes": Path(file["path"]).stat().st_size,
            "sha256": file_sha256(file["path"]),
        }
        for file in files
    ]


def python_docs_input(records: list[Record]) -> dict[str, Any]:
    """The built-in corpus as one input: its hash covers every document's id and text."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(record["id"].encode() + b"\0" + record["text"].encode() + b"\0")
    return {
        "path": PYTHON_DOCS,
        "source": PYTHON_DOCS,
        "python": platform.python_version(),
        "documents": len(records),
        "sha256": digest.hexdigest(),
    }


def build_manifest(
    parameters: dict[str, Any],
    out: Path,
    inputs: list[dict[str, Any]],
    tokenizer: Tokenizer,
    dtype: np.dtype,
    shards: dict[str, list[ShardInfo]],
    stages: list[StageStats],
) -> dict[str, Any]:
    outputs = sorted((out / SHARDS_DIR).iterdir()) + sorted((out / TOKENIZER_DIR).iterdir())
    return {
        "version": MANIFEST_VERSION,
        "inputs": inputs,
        "parameters": parameters,  # what determines the output (IngestOptions.parameters())
        "stages": [
            {"stage": s.stage, "documents_in": s.documents_in, "documents_out": s.documents_out, "dropped": s.dropped}
            | ({"languages": s.languages} if s.languages else {})
            for s in stages
        ],
        "tokenizer": {
            "sha256": tokenizer.sha256(),
            "vocab_size": tokenizer.vocab_size,
            "eos_token_id": tokenizer.eos_token_id,
            "path": TOKENIZER_DIR,
        },
        "shards": {
            "dtype": dtype.name,
            "directory": SHARDS_DIR,
            "splits": {name: [asdict(info) for info in infos] for name, infos in shards.items()},
            "documents": {name: sum(info.documents for info in infos) for name, infos in shards.items()},
            "tokens": {name: sum(info.tokens for info in infos) for name, infos in shards.items()},
        },
        "outputs": [
            {"path": str(path.relative_to(out)), "bytes": path.stat().st_size, "sha256": file_sha256(str(path))}
            for path in outputs
        ],
    }
