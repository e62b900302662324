"""Which files of a directory (`--dir`) go into the prompt: every rule in one place.

A file is skipped, and listed in the plan with its category, when
  - it lies in a version-control folder (`.git`, `.hg`, `.svn`; always, .gitignore or not);
  - it lies in a generated or vendored folder (SKIPPED_DIRECTORIES: node_modules, __pycache__,
    .venv, tool caches);
  - a `.gitignore` ignores it (the directory's own and every nested one, git's rules:
    the deepest .gitignore that matches decides, `!pattern` re-includes, an ignored folder
    is not entered);
  - its name is a lock file (LOCK_FILES) or a generated file (GENERATED_FILE_PATTERNS:
    minified JS/CSS, source maps, compiled Python);
  - it is over MAX_TEXT_FILE_BYTES (1 MiB; PDFs are read whatever their size);
  - it is binary (a NUL byte in its first BINARY_SNIFF_BYTES) or not UTF-8 text;
  - it is a PDF without a text layer, or a PDF pypdf cannot read;
  - it is a symbolic link to a folder (not followed) or not a regular file.
Files given with --file are read whatever their name or size (binary and non-UTF-8 files are an
error there, not a skip).
"""
from __future__ import annotations

from fnmatch import fnmatchcase

VERSION_CONTROL_DIRECTORIES = frozenset({".git", ".hg", ".svn"})
SKIPPED_DIRECTORIES = frozenset({
    "node_modules", "__pycache__", ".venv", ".tox", ".nox", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".ipynb_checkpoints", ".eggs"})
LOCK_FILES = frozenset({
    "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "bun.lockb",
    "poetry.lock", "Pipfile.lock", "uv.lock", "pdm.lock", "Cargo.lock", "composer.lock",
    "Gemfile.lock", "go.sum", "flake.lock"})
GENERATED_FILE_PATTERNS = ("*.min.js", "*.min.css", "*.map", "*.pyc", "*.pyo", ".DS_Store")
MAX_TEXT_FILE_BYTES = 1 << 20
BINARY_SNIFF_BYTES = 8192
PDF_SUFFIX = ".pdf"

# categories, as the plan counts them
VERSION_CONTROL = "version control"
GENERATED_OR_VENDORED = "generated or vendored"
GITIGNORED = "ignored by .gitignore"
LOCK_FILE = "lock file"
TOO_LARGE = f"over {MAX_TEXT_FILE_BYTES >> 20} MiB"
BINARY = "binary"
NOT_UTF8 = "not UTF-8"
PDF_WITHOUT_TEXT = "PDF without text"
UNREADABLE = "unreadable"
LINK_OR_SPECIAL = "link or special file"


def directory_category(name: str) -> str | None:
    """Why a folder of this name is never entered, or None."""
    if name in VERSION_CONTROL_DIRECTORIES:
        return VERSION_CONTROL
    if name in SKIPPED_DIRECTORIES:
        return GENERATED_OR_VENDORED
    return None


def file_name_category(name: str) -> str | None:
    """Why a file of this name is skipped before it is read, or None."""
    if name in VERSION_CONTROL_DIRECTORIES:        # `.git` as a file: a worktree or submodule
        return VERSION_CONTROL
    if name in LOCK_FILES:
        return LOCK_FILE
    if any(fnmatchcase(name, pattern) for pattern in GENERATED_FILE_PATTERNS):
        return GENERATED_OR_VENDORED
    return None


def is_pdf(name: str) -> bool:
    return name.lower().endswith(PDF_SUFFIX)


def is_readme(relative_path: str) -> bool:
    """A README at the directory's top: it comes first in the prompt."""
    return "/" not in relative_path and relative_path.upper().startswith("README")
