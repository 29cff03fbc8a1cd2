"""Readers: sources on disk (or the built-in corpus) in, document records out.

`sources.py` turns what the command line names into files; `dispatch.py` reads each file
through any compression (`compression.py`) and archive (`archives.py`) around it, identifies
its format by content and suffix (`sniff.py`), and hands it to the reader of that format:
`text.py` (plain text, any encoding), `source_code.py` (code, by language), `web.py` (HTML,
WARC and WET, each page's main content from `main_content.py`), `documents.py` (PDF, DOCX),
`structured.py` (JSONL, parquet). `inputs.py` is what they share: one input as a stream, with
the id and metadata of where it came from.
"""

from tokenworks.data.readers.dispatch import read_files
from tokenworks.data.readers.sources import discover_files, file_sha256, python_docs_records

__all__ = ["discover_files", "file_sha256", "python_docs_records", "read_files"]
