"""Errors of reading documents and of fitting them into a prompt: one line (or one paragraph)
for the user, never a traceback (turboctx.cli prints TurboctxError messages)."""
from __future__ import annotations

from turboctx.errors import TurboctxError


class DocumentError(TurboctxError):
    """An input cannot be read: missing, binary, not UTF-8, a PDF without text, nothing left in a
    directory, no input at all. Exit code 2, like every other bad input."""


class DocumentsTooLongError(TurboctxError):
    """The documents (plus the tokens to generate) do not fit max_model_len or memory; the
    message says by how much and which options would make them fit."""
    exit_code = 1
