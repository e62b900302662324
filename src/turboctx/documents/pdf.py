"""PDF text through pypdf: every page's text layer, each page opened by a `[page N]` line."""
from __future__ import annotations

import logging
from pathlib import Path

from turboctx.documents import rules


class PdfUnreadable(Exception):
    """No text comes out of a PDF; `category` is rules.PDF_WITHOUT_TEXT or rules.UNREADABLE."""

    def __init__(self, category: str, detail: str):
        super().__init__(detail)
        self.category, self.detail = category, detail


def page_marker(number: int) -> str:
    return f"[page {number}]"


def read_pdf_text(path: Path) -> str:
    """'[page 1]\\n<text>\\n[page 2]\\n...'; raises PdfUnreadable when the PDF cannot be parsed,
    is encrypted, or has no text on any page (a scan without OCR)."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    quiet = logging.getLogger("pypdf")
    level = quiet.level
    quiet.setLevel(logging.ERROR)         # pypdf logs repairs of damaged files as warnings
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise PdfUnreadable(rules.UNREADABLE, "encrypted; decrypt it first (e.g. qpdf --decrypt)")
        pages = [page.extract_text() or "" for page in reader.pages]
    except PdfUnreadable:
        raise
    except (PyPdfError, OSError, ValueError, KeyError, TypeError) as e:
        raise PdfUnreadable(rules.UNREADABLE, f"pypdf cannot read it: {e}") from None
    finally:
        quiet.setLevel(level)
    if not any(text.strip() for text in pages):
        raise PdfUnreadable(rules.PDF_WITHOUT_TEXT,
                            f"{len(pages)} page{'s' if len(pages) != 1 else ''}, no text layer")
    return "".join(f"{page_marker(i + 1)}\n{text.rstrip()}\n" for i, text in enumerate(pages))
