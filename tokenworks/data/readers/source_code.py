"""Source code: which programming language a file is in, from its suffix, its name or its shebang.

Code is read as its own kind of document (`metadata.kind = "code"`,
`metadata.programming_language`): the clean stage applies code quality rules to it instead of
the prose ones, keeps its indentation, and skips natural-language identification.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

# Languages as The Stack names them.
_BY_SUFFIX = {
    ".c": "C", ".h": "C", ".cc": "C++", ".cpp": "C++", ".cxx": "C++", ".hh": "C++", ".hpp": "C++",
    ".cs": "C#", ".go": "Go", ".rs": "Rust", ".java": "Java", ".kt": "Kotlin", ".scala": "Scala",
    ".swift": "Swift", ".py": "Python", ".pyi": "Python", ".rb": "Ruby", ".pl": "Perl", ".pm": "Perl",
    ".perl": "Perl", ".php": "PHP", ".js": "JavaScript", ".mjs": "JavaScript", ".cjs": "JavaScript",
    ".ts": "TypeScript", ".tsx": "TypeScript", ".jsx": "JavaScript", ".lua": "Lua", ".r": "R",
    ".jl": "Julia", ".hs": "Haskell", ".ml": "OCaml", ".el": "Emacs Lisp", ".lisp": "Common Lisp",
    ".scm": "Scheme", ".clj": "Clojure", ".erl": "Erlang", ".ex": "Elixir", ".exs": "Elixir",
    ".sh": "Shell", ".bash": "Shell", ".zsh": "Shell", ".fish": "Shell", ".awk": "Awk", ".sed": "sed",
    ".tcl": "Tcl", ".sql": "SQL", ".css": "CSS", ".scss": "SCSS", ".f90": "Fortran", ".f": "Fortran",
    ".pas": "Pascal", ".dart": "Dart", ".vim": "Vim script", ".cmake": "CMake",
    ".mk": "Makefile", ".cocci": "SmPL", ".ps1": "PowerShell", ".bat": "Batchfile", ".asm": "Assembly",
    ".s": "Assembly", ".m4": "M4", ".y": "Yacc", ".l": "Lex", ".proto": "Protocol Buffer",
}  # fmt: skip
_BY_NAME = {"makefile": "Makefile", "gnumakefile": "Makefile", "cmakelists.txt": "CMake", "dockerfile": "Dockerfile"}
_BY_INTERPRETER = {
    "sh": "Shell", "bash": "Shell", "dash": "Shell", "zsh": "Shell", "ksh": "Shell", "fish": "Shell",
    "python": "Python", "perl": "Perl", "ruby": "Ruby", "node": "JavaScript", "nodejs": "JavaScript",
    "php": "PHP", "lua": "Lua", "tclsh": "Tcl", "wish": "Tcl", "awk": "Awk", "gawk": "Awk", "mawk": "Awk",
    "sed": "sed", "Rscript": "R", "make": "Makefile",
}  # fmt: skip
# `#!/usr/bin/env -S python3 -u` and `#! /bin/sh -e` alike: the interpreter, less its version.
_SHEBANG = re.compile(rb"#!\s*(\S+)(?:\s+(?:-\S+\s+)*(\S+))?")
_VERSION = re.compile(r"[\d.]+$")


def language_from_name(name: str) -> str | None:
    path = PurePosixPath(name)
    return _BY_NAME.get(path.name.lower()) or _BY_SUFFIX.get(path.suffix.lower())


def language_from_shebang(head: bytes) -> str | None:
    """The language of a script's `#!` line, or None (not a script, or an interpreter we do not know)."""
    if not head.startswith(b"#!"):
        return None
    match = _SHEBANG.match(head.split(b"\n", 1)[0])
    if not match:
        return None
    program = match.group(1)
    if program.endswith(b"/env") and match.group(2):
        program = match.group(2)
    interpreter = _VERSION.sub("", PurePosixPath(program.decode("latin-1")).name)
    return _BY_INTERPRETER.get(interpreter)
