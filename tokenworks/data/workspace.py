"""The ingest output directory: stage results, completion markers and rejected documents.

    OUT/work/<stage>.parquet      documents that left the stage (id, text, source, metadata[, split])
    OUT/work/<stage>.done.json    the stage's key (a hash of its inputs and parameters) and stats
    OUT/rejected/<stage>.jsonl    every document a stage dropped, with its reason
    OUT/tokenizer/, OUT/shards/   the tokenizer and token shards
    OUT/stats.json, OUT/manifest.json

A stage whose marker holds the key of the current inputs and parameters is complete, and a
re-run skips it; the marker is written last, so an interrupted stage is simply run again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tokenworks.data.records import Record

_COLUMNS = ("id", "text", "source", "metadata")


class Workspace:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.work = out / "work"
        self.rejected = out / "rejected"
        for directory in (self.out, self.work, self.rejected):
            directory.mkdir(parents=True, exist_ok=True)

    def completed(self, stage: str, key: str) -> dict[str, Any] | None:
        """The stats of a completed stage with this key, or None when it must run."""
        marker = self.work / f"{stage}.done.json"
        if not marker.is_file():
            return None
        done = json.loads(marker.read_text())
        return done["stats"] if done.get("key") == key else None

    def mark_completed(self, stage: str, key: str, stats: dict[str, Any]) -> None:
        marker = self.work / f"{stage}.done.json"
        marker.write_text(json.dumps({"key": key, "stats": stats}, indent=2, sort_keys=True) + "\n")

    def save_documents(self, stage: str, records: list[Record]) -> None:
        columns: dict[str, list] = {name: [] for name in _COLUMNS}
        splits = []
        for record in records:
            for name in ("id", "text", "source"):
                columns[name].append(record[name])
            columns["metadata"].append(json.dumps(record["metadata"], sort_keys=True))
            splits.append(record.get("split"))
        if any(split is not None for split in splits):
            columns["split"] = splits
        schema = pa.schema([(name, pa.string()) for name in columns])
        pq.write_table(pa.Table.from_pydict(columns, schema=schema), self.work / f"{stage}.parquet")

    def load_documents(self, stage: str) -> list[Record]:
        table = pq.read_table(self.work / f"{stage}.parquet").to_pydict()
        records = []
        for index in range(len(table["id"])):
            record = {name: table[name][index] for name in ("id", "text", "source")}
            record["metadata"] = json.loads(table["metadata"][index])
            if "split" in table:
                record["split"] = table["split"][index]
            records.append(record)
        return records

    def write_rejected(self, stage: str, records: list[Record]) -> None:
        """One JSON line per dropped document: id, source, stage, reason, details, text."""
        with open(self.rejected / f"{stage}.jsonl", "w", encoding="utf-8") as handle:
            for record in records:
                row = {"id": record["id"], "source": record["source"], **record["rejected"]}
                row.update(metadata=record["metadata"], text=record["text"])
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
