"""`--dir DIR`: the text files of a code repository, in a fixed order, each named by its path.

What is left out and why is in rules.py; every file left out is returned as a SkippedFile, never
dropped silently. Order: README* files at the top first, then every file sorted by its path
(folders by name, component by component).
"""
from __future__ import annotations

import os
from pathlib import Path

from turboctx.documents import rules
from turboctx.documents.document import Document, DocumentSet, SkippedFile
from turboctx.documents.errors import DocumentError
from turboctx.documents.gitignore import GitIgnoreRules
from turboctx.documents.pdf import PdfUnreadable, read_pdf_text
from turboctx.documents.summary import skipped_summary
from turboctx.documents.text_files import NotText, decode_text


def read_directory(root: Path) -> DocumentSet:
    """Every readable file under root as a Document named `root/relative/path` (as root was
    given); the rest as SkippedFiles. Raises DocumentError when root is missing, not a folder,
    or holds nothing readable (saying how many files were skipped and why)."""
    if not root.exists():
        raise DocumentError(f"directory {str(root)!r} does not exist")
    if not root.is_dir():
        raise DocumentError(f"{str(root)!r} is a file, not a directory; give it with --file")
    found = DocumentSet()
    candidates = _walk(root, found.skipped)
    for relative in sorted(candidates, key=_prompt_order):
        document_or_skip = _read_file(root, relative)
        if isinstance(document_or_skip, Document):
            found.documents.append(document_or_skip)
        else:
            found.skipped.append(document_or_skip)
    found.skipped.sort(key=lambda s: s.path.split("/"))
    if not found.documents:
        raise DocumentError(f"nothing readable in directory {str(root)!r}: {nothing_read(found.skipped)}")
    return found


def nothing_read(skipped: list[SkippedFile]) -> str:
    return skipped_summary(skipped) if skipped else "it holds no files"


def _prompt_order(relative: str) -> tuple[bool, list[str]]:
    return (not rules.is_readme(relative), relative.split("/"))


def _walk(root: Path, skipped: list[SkippedFile]) -> list[str]:
    """Relative posix paths of the files to read; folders and files left out go to `skipped`."""
    ignore = GitIgnoreRules()
    files: list[str] = []

    def fail(error: OSError) -> None:
        where = Path(error.filename or root)
        skipped.append(SkippedFile(where.as_posix() + "/", rules.UNREADABLE, error.strerror or str(error)))

    for folder_path, folder_names, file_names in os.walk(root, onerror=fail):
        folder = Path(folder_path).relative_to(root).as_posix()
        folder = "" if folder == "." else folder
        ignore.load(folder, Path(folder_path))
        entered = []
        for name in sorted(folder_names):
            relative = f"{folder}/{name}" if folder else name
            category, detail = rules.directory_category(name), ""
            if category is None and (source := ignore.ignored_by(relative, is_directory=True)):
                category, detail = rules.GITIGNORED, shown(root, source)
            if category is None and Path(folder_path, name).is_symlink():
                category, detail = rules.LINK_OR_SPECIAL, "a symbolic link to a folder, not followed"
            if category is None:
                entered.append(name)
            else:
                skipped.append(SkippedFile(shown(root, relative) + "/", category, detail))
        folder_names[:] = entered
        for name in file_names:
            relative = f"{folder}/{name}" if folder else name
            category, detail = rules.file_name_category(name), ""
            if category is None and (source := ignore.ignored_by(relative, is_directory=False)):
                category, detail = rules.GITIGNORED, shown(root, source)
            if category is None:
                files.append(relative)
            else:
                skipped.append(SkippedFile(shown(root, relative), category, detail))
    return files


def shown(root: Path, relative: str) -> str:
    """How a file under root is named in the prompt and the plan: root as given, then the
    relative path ('--dir .' gives 'src/app.py', '--dir repo' gives 'repo/src/app.py')."""
    return (root / relative).as_posix()


def _read_file(root: Path, relative: str) -> Document | SkippedFile:
    path = root / relative
    name = shown(root, relative)
    try:
        if not path.is_file():
            return SkippedFile(name, rules.LINK_OR_SPECIAL, "a broken link or not a regular file")
        if rules.is_pdf(relative):
            return Document(name, read_pdf_text(path), "pdf")
        size = path.stat().st_size
        if size > rules.MAX_TEXT_FILE_BYTES:
            return SkippedFile(name, rules.TOO_LARGE, f"{size / (1 << 20):.1f} MiB")
        return Document(name, decode_text(path.read_bytes()), "text")
    except (NotText, PdfUnreadable) as e:
        return SkippedFile(name, e.category, e.detail)
    except OSError as e:
        return SkippedFile(name, rules.UNREADABLE, e.strerror or str(e))
