"""What was left out, in words: 'skipped 5 files and 2 directories: 3 binary, 2 ...'."""
from __future__ import annotations

from collections import Counter

from turboctx.documents.document import SkippedFile


def skipped_summary(skipped: list[SkippedFile]) -> str:
    """One phrase counting the skipped files and folders, by category (largest first)."""
    if not skipped:
        return "nothing skipped"
    folders = sum(s.is_directory for s in skipped)
    files = len(skipped) - folders
    counted = [f"{files} file{'s' if files != 1 else ''}"] if files else []
    counted += [f"{folders} director{'ies' if folders != 1 else 'y'}"] if folders else []
    by_category = Counter(s.category for s in skipped)
    reasons = ", ".join(f"{n} {category}" for category, n in
                        sorted(by_category.items(), key=lambda item: (-item[1], item[0])))
    return f"skipped {' and '.join(counted)}: {reasons}"
