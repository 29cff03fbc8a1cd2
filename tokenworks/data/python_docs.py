"""The default corpus: the documentation that ships with the running Python interpreter.

Two parts, read without network or files in the repo:
- `pydoc_data.topics`: the language reference topics behind `help()` (about 80 documents);
- the standard library's docstrings, one document per module (module, class and function
  docstrings), read by parsing the source with `ast`, never by importing it (importing
  every module would run `antigravity` and friends).
"""

from __future__ import annotations

import ast
import logging
import pydoc_data.topics
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from tokenworks.data.document import Document

logger = logging.getLogger(__name__)

SOURCE = "python-docs"
# Test suites and third-party packages are not documentation.
_SKIPPED_PARTS = {"test", "tests", "site-packages", "dist-packages", "idle_test", "__pycache__"}


def python_docs(include_topics: bool = True, include_modules: bool = True) -> Iterator[Document]:
    """Yield the interpreter's documentation as documents, in a fixed order."""
    if include_topics:
        for name, text in sorted(pydoc_data.topics.topics.items()):
            yield Document(id=f"topic:{name}", text=text, source=SOURCE, metadata={"kind": "topic"})
    if include_modules:
        yield from _stdlib_docstrings(Path(sysconfig.get_paths()["stdlib"]))


def _stdlib_docstrings(stdlib: Path) -> Iterator[Document]:
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if _SKIPPED_PARTS.intersection(relative.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError) as error:  # a file we cannot read is skipped, with its reason
            logger.info("skipped %s: %s", path, error)
            continue
        text = "\n\n".join(_docstrings(tree))
        if text:
            module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
            yield Document(id=f"module:{module}", text=text, source=SOURCE, metadata={"kind": "module"})


def _docstrings(tree: ast.Module) -> Iterator[str]:
    """The module docstring, then each class's and function's, headed by its qualified name."""
    module_doc = ast.get_docstring(tree)
    if module_doc:
        yield module_doc
    stack: list[tuple[str, ast.AST]] = [("", node) for node in reversed(tree.body)]
    while stack:
        prefix, node = stack.pop()
        if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        name = f"{prefix}{node.name}"
        doc = ast.get_docstring(node)
        if doc:
            yield f"{name}\n{doc}"
        stack.extend((f"{name}.", child) for child in reversed(node.body))
