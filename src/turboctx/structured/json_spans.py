"""Where the members of a (possibly unfinished) JSON object lie in a text.

Tool-call parsers need the model's own text of `arguments` (streamed as it grows, then returned
whole) and the call's `name` as soon as it is complete, before the object is closed. `scan_object`
walks a prefix of a JSON object and says, per top-level key, where its value starts and (once
complete) ends; json.loads checks each finished piece.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

_WS = " \t\n\r"
_CLOSE = {"{": "}", "[": "]"}


@dataclass
class ObjectScan:
    """`members`: key -> (value start, value end or None while unfinished), in text order.
    `end`: index just past the closing `}`, None while unclosed. `ok`: False once the text
    cannot be the start of a JSON object."""

    members: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    end: int | None = None
    ok: bool = True

    def value(self, text: str, key: str) -> str | None:
        """The finished value text of `key`, or None (absent or unfinished)."""
        span = self.members.get(key)
        return None if span is None or span[1] is None else text[span[0]:span[1]]


def skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _string_end(text: str, i: int) -> int | None:
    """text[i] == '"' -> index past the closing quote, or None if the text ends first."""
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    return None


def value_end(text: str, i: int) -> int | None:
    """A JSON value starts at text[i] -> index past its end; None if the text ends first;
    -1 if it cannot be a JSON value. Scalars end at the next delimiter; json.loads judges them."""
    if i >= len(text):
        return None
    c = text[i]
    if c == '"':
        return _string_end(text, i)
    if c in _CLOSE:
        stack = [_CLOSE[c]]
        j = i + 1
        while j < len(text):
            c = text[j]
            if c == '"':
                end = _string_end(text, j)
                if end is None:
                    return None
                j = end
                continue
            if c in _CLOSE:
                stack.append(_CLOSE[c])
            elif c in "}]":
                if c != stack.pop():
                    return -1
                if not stack:
                    return j + 1
            j += 1
        return None
    if c in "-0123456789tfn":
        j = i
        while j < len(text) and text[j] not in _WS + ",}]":
            j += 1
        return None if j == len(text) else j
    return -1


def scan_object(text: str, start: int = 0) -> ObjectScan:
    """Scan the JSON object that begins at text[start] (after optional whitespace)."""
    scan = ObjectScan()
    i = skip_ws(text, start)
    if i == len(text):
        return scan
    if text[i] != "{":
        scan.ok = False
        return scan
    i = skip_ws(text, i + 1)
    if i < len(text) and text[i] == "}":
        scan.end = i + 1
        return scan
    while i < len(text):
        if text[i] != '"':
            scan.ok = False
            return scan
        key_end = _string_end(text, i)
        if key_end is None:
            return scan
        try:
            key = json.loads(text[i:key_end])
        except ValueError:
            scan.ok = False
            return scan
        i = skip_ws(text, key_end)
        if i == len(text):
            return scan
        if text[i] != ":":
            scan.ok = False
            return scan
        i = skip_ws(text, i + 1)
        if i == len(text):
            return scan
        end = value_end(text, i)
        if end == -1:
            scan.ok = False
            return scan
        scan.members[key] = (i, end)
        if end is None:
            return scan
        i = skip_ws(text, end)
        if i == len(text):
            return scan
        if text[i] == "}":
            scan.end = i + 1
            return scan
        if text[i] != ",":
            scan.ok = False
            return scan
        i = skip_ws(text, i + 1)
    return scan
