"""Trafilatura's own extraction of every page of the generated crawl: what the agreement check compares with.

    PYTHON benchmarks/warc_reference.py WARC_DIR OUT.jsonl SETTINGS.json [PROCESSES]

Run by `ingest_vs_datatrove.py --pipeline warc` in datatrove's virtualenv (it has warcio and
trafilatura). Each HTML response is decoded with the charset its HTTP header declares (the
generator's truth) and given to `trafilatura.extract(html, **SETTINGS)`, the settings datatrove's
Trafilatura step passes. One process per WARC file, pages in file order: trafilatura's
`deduplicate` keeps a per-process cache of the paragraphs it has seen, and datatrove runs one
task per file in one extraction process, so the cache sees what datatrove's sees.
Writes one line per page: {"url": ..., "text": ... or null}.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def extract_file(path: str, settings: dict) -> list[dict]:
    import trafilatura
    from warcio.archiveiterator import ArchiveIterator

    pages = []
    with open(path, "rb") as stream:
        for record in ArchiveIterator(stream):
            if record.rec_type != "response" or record.rec_headers.get("WARC-Identified-Payload-Type") != "text/html":
                continue
            content_type = record.http_headers.get_header("Content-Type") or ""
            charset = content_type.partition("charset=")[2].strip() or "utf-8"
            markup = record.content_stream().read().decode(charset, errors="replace")
            text = trafilatura.extract(markup, **settings)
            pages.append({"url": record.rec_headers.get("WARC-Target-URI"), "text": text})
    return pages


def main() -> int:
    folder, out, settings_file = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    processes = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    settings = json.loads(settings_file.read_text())
    files = sorted(str(path) for path in folder.glob("*.warc*"))
    with ProcessPoolExecutor(processes) as pool, open(out, "w", encoding="utf-8") as rows:
        for pages in pool.map(extract_file, files, [settings] * len(files)):
            for page in pages:
                rows.write(json.dumps(page, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
