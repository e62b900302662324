"""What the readers produce: documents to put in a prompt, and the files left out (with why)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Document:
    name: str            # what its header shows: the path as given, or "<stdin>"
    text: str            # the whole text, as read (PDFs: page by page, see pdf.py)
    kind: str            # "text" | "pdf" | "stdin"


@dataclass(frozen=True)
class SkippedFile:
    path: str            # as it would be named; directories end with "/"
    category: str        # a rules.py category, e.g. "binary", "ignored by .gitignore"
    detail: str = ""     # e.g. which .gitignore, the decoding error

    @property
    def is_directory(self) -> bool:
        return self.path.endswith("/")

    def describe(self) -> str:
        return f"{self.category} ({self.detail})" if self.detail else self.category


@dataclass
class DocumentSet:
    """Every document to read, in prompt order, and everything looked at but left out."""
    documents: list[Document] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def extend(self, other: "DocumentSet") -> None:
        self.documents.extend(other.documents)
        self.skipped.extend(other.skipped)
