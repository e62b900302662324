"""Bytes into text: UTF-8 only, binary files recognised by a NUL byte."""
from __future__ import annotations

from turboctx.documents import rules


class NotText(Exception):
    """The bytes are not UTF-8 text; `category` is rules.BINARY or rules.NOT_UTF8."""

    def __init__(self, category: str, detail: str):
        super().__init__(detail)
        self.category, self.detail = category, detail


def decode_text(data: bytes) -> str:
    """The text of a file's bytes; raises NotText for a binary or non-UTF-8 file. A leading
    UTF-8 byte-order mark is not part of the text."""
    if b"\x00" in data[:rules.BINARY_SNIFF_BYTES]:
        raise NotText(rules.BINARY, f"a NUL byte in its first {rules.BINARY_SNIFF_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise NotText(rules.NOT_UTF8, f"byte 0x{data[e.start]:02x} at offset {e.start} is not "
                                      f"UTF-8") from None
