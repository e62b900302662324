"""The .gitignore files of a directory tree, with git's precedence (pathspec's GitIgnoreSpec)."""
from __future__ import annotations

from pathlib import Path

GITIGNORE = ".gitignore"


class GitIgnoreRules:
    """Every .gitignore met while walking a tree, by the folder it lies in ('' = the top).

    A path is ignored when the deepest .gitignore with a pattern matching it says so: within
    one file the last matching pattern wins (`!pattern` re-includes); a deeper file overrides
    the ones above it. Folders are asked about with a trailing "/" so that `build/` patterns
    match them, and an ignored folder is never entered (git cannot re-include files in it either).
    """

    def __init__(self) -> None:
        self._specs: dict[str, object] = {}      # folder (posix, relative) -> GitIgnoreSpec

    def load(self, folder: str, folder_path: Path) -> None:
        """Reads `folder_path/.gitignore` if there is one; folder: its path relative to the top."""
        from pathspec import GitIgnoreSpec
        file = folder_path / GITIGNORE
        if not file.is_file():
            return
        try:
            lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return
        self._specs[folder] = GitIgnoreSpec.from_lines(lines)

    def ignored_by(self, path: str, is_directory: bool) -> str | None:
        """The .gitignore (relative path) that ignores `path` (posix, relative to the top), or None."""
        parts = path.split("/")
        for depth in range(len(parts) - 1, -1, -1):   # the deepest folder first
            folder = "/".join(parts[:depth])
            spec = self._specs.get(folder)
            if spec is None:
                continue
            inside = "/".join(parts[depth:]) + ("/" if is_directory else "")
            include = spec.check_file(inside).include
            if include is not None:
                return (f"{folder}/{GITIGNORE}" if folder else GITIGNORE) if include else None
        return None
