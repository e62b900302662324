"""Command-line inputs into documents: `--file PATH` (text or PDF, repeatable), `--file -`
(stdin), `--dir DIR` (a repository, repeatable). Files come first, in the order given, then
each directory's files (directory.py's order)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO, Iterable

from turboctx.documents import rules
from turboctx.documents.directory import read_directory
from turboctx.documents.document import Document, DocumentSet
from turboctx.documents.errors import DocumentError
from turboctx.documents.pdf import PdfUnreadable, read_pdf_text
from turboctx.documents.text_files import NotText, decode_text

STDIN = "-"
STDIN_NAME = "<stdin>"
NO_INPUT = ("give the documents to ask about: --file PATH (repeatable; text or PDF), "
            "--dir DIR (a code repository, repeatable) or --file - (stdin)")


def read_inputs(files: Iterable[str | Path] = (), directories: Iterable[str | Path] = (),
                stdin: BinaryIO | None = None) -> DocumentSet:
    """Every input as Documents, plus what the directories left out. stdin: the byte stream
    `--file -` reads (default: sys.stdin's). Raises DocumentError for an input that cannot be
    read (one line naming it)."""
    found = DocumentSet()
    for given in files:
        found.documents.append(read_file(str(given), stdin))
    for given in directories:
        found.extend(read_directory(Path(given)))
    return found


def read_file(given: str, stdin: BinaryIO | None = None) -> Document:
    """One `--file` input: a text file, a PDF (by its .pdf extension) or '-' for stdin."""
    if given == STDIN:
        return _read_stdin(stdin if stdin is not None else sys.stdin.buffer)
    path = Path(given)
    if not path.exists():
        raise DocumentError(f"file {given!r} does not exist")
    if path.is_dir():
        raise DocumentError(f"{given!r} is a directory; give it with --dir")
    try:
        if rules.is_pdf(given):
            return Document(given, read_pdf_text(path), "pdf")
        return Document(given, decode_text(path.read_bytes()), "text")
    except PdfUnreadable as e:
        if e.category == rules.PDF_WITHOUT_TEXT:
            raise DocumentError(f"PDF {given!r} has no text layer ({e.detail}: a scan?); run OCR "
                                f"on it first (e.g. ocrmypdf) or give its text as a file") from None
        raise DocumentError(f"cannot read PDF {given!r}: {e.detail}") from None
    except NotText as e:
        raise DocumentError(f"file {given!r} is not UTF-8 text ({e.detail}); convert it "
                            f"(e.g. iconv -t utf-8) or give a PDF as .pdf") from None
    except OSError as e:
        raise DocumentError(f"cannot read {given!r}: {e.strerror or e}") from None


def _read_stdin(stream: BinaryIO) -> Document:
    try:
        text = decode_text(stream.read())
    except NotText as e:
        raise DocumentError(f"stdin is not UTF-8 text ({e.detail})") from None
    if not text.strip():
        raise DocumentError("stdin is empty; pipe the document in, e.g. "
                            "`cat notes.txt | turboctx ask --file - \"...\"`")
    return Document(STDIN_NAME, text, "stdin")
