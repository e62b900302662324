"""Streaming tool-call parsing: text deltas in, OpenAI streaming deltas out.

    stream = tool_parser("hermes").streaming()
    for text in deltas:
        for d in stream.feed(text):  # DeltaMessage(content=..., tool_calls=[...]): one chunk each
            send(d)
    for d in stream.finish():        # what was held back; then stream.result() == parse(full text)
        send(d)

A call's first delta is `{"index": i, "id": ..., "type": "function", "function": {"name": ...,
"arguments": ""}}`; later ones are `{"index": i, "function": {"arguments": "<next piece>"}}`. Each
DeltaMessage holds content or tool-call deltas, never both, and at most one entry per call, so a
client that merges chunks by `index` (the openai SDK does) rebuilds the calls.
Nothing of the call markup reaches the content: a tail that could begin `<tool_call>` (or
`<|python_tag|>`) waits for the next delta, and so does whitespace that may turn out to be the
content's end. For well-formed output the final `result()` equals the whole-text parser's for any
chunking. A call's first delta goes out once its name is known and its arguments object has
begun; if its JSON breaks after that, the call stays as sent (the non-streaming parser would
return that block as content).
Until its arguments begin, a call is re-scanned from its start on each delta; the arguments
object is then followed character by character, each character once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from turboctx.structured.json_spans import scan_object, skip_ws
from turboctx.structured.tool_calls import (HERMES_END, HERMES_START, PYTHON_TAG, CallFormat,
                                            ParsedToolCalls, call_from_object, finish_content)

_WS = " \t\n\r"


@dataclass
class DeltaMessage:
    """One streaming chunk's delta: `content` (None if none) or OpenAI tool-call deltas."""

    content: str | None = None
    tool_calls: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content) or bool(self.tool_calls)


class _ValueCursor:
    """Finds the end of the JSON object or array that begins at text[start], reading each
    character once however the text arrives."""

    def __init__(self, start: int):
        self.start = self.pos = start
        self.depth = 0
        self.in_string = self.escape = False
        self.end: int | None = None

    def advance(self, text: str) -> int | None:
        """Read text[pos:] -> index past the value's end, or None while it is open."""
        i = self.pos
        while self.end is None and i < len(text):
            c = text[i]
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.end = i + 1
            i += 1
        self.pos = i
        return self.end


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class StreamingToolParser:
    """Shared state: held-back text and whitespace, the calls sent so far."""

    def __init__(self, parser: CallFormat):
        self.parser = parser
        self._buf = ""
        self._pending_ws = ""          # whitespace held back: content continues or ends here
        self._started = False          # some content was sent
        self._content: list[str] = []
        self._calls: list[dict] = []
        self._header = False           # the current call's first delta was sent
        self._cursor: _ValueCursor | None = None   # the end search of its arguments object
        self._finished = False
        self._out: list[DeltaMessage] = []

    def feed(self, delta: str) -> list[DeltaMessage]:
        """The next text of the output -> the chunks it completes (often none or one)."""
        if self._finished:
            raise RuntimeError("feed() after finish(); start a new streaming parser per response")
        self._out = []
        self._buf += delta
        self._process(final=False)
        return self._out

    def finish(self) -> list[DeltaMessage]:
        """End of the output: send what was held back (trailing whitespace is dropped)."""
        if self._finished:
            return []
        self._out = []
        self._process(final=True)
        self._finished = True
        return self._out

    def result(self) -> ParsedToolCalls:
        """All content and calls sent so far (after finish(): the whole answer)."""
        return ParsedToolCalls(finish_content("".join(self._content)),
                               [dict(c, function=dict(c["function"])) for c in self._calls])

    def _process(self, final: bool) -> None:
        raise NotImplementedError

    # ---- sending ----------------------------------------------------------------------------
    def _emit_content(self, text: str) -> None:
        core = text.rstrip(_WS)
        if not core:
            if self._started:
                self._pending_ws += text
            return
        piece = self._pending_ws + core if self._started else core.lstrip(_WS)
        self._pending_ws = text[len(core):]
        self._started = True
        self._content.append(piece)
        if not self._out or self._out[-1].tool_calls:
            self._out.append(DeltaMessage())
        self._out[-1].content = (self._out[-1].content or "") + piece

    def _open_call(self, name: str) -> None:
        index = len(self._calls)
        call_id = self.parser.id_factory()
        self._calls.append({"id": call_id, "type": "function",
                            "function": {"name": name, "arguments": ""}})
        self._out.append(DeltaMessage(tool_calls=[{"index": index, "id": call_id, "type": "function",
                                                   "function": {"name": name, "arguments": ""}}]))
        self._header = True

    def _add_arguments(self, piece: str) -> None:
        if not piece:
            return
        index = len(self._calls) - 1
        self._calls[index]["function"]["arguments"] += piece
        last = self._out[-1].tool_calls[-1] if self._out and self._out[-1].tool_calls else None
        if last is not None and last["index"] == index and "id" not in last:
            last["function"]["arguments"] += piece
        elif last is not None and "id" not in last:
            self._out[-1].tool_calls.append({"index": index, "function": {"arguments": piece}})
        else:          # after content or a call's first delta: a chunk of its own
            self._out.append(DeltaMessage(tool_calls=[{"index": index, "function": {"arguments": piece}}]))

    def _sent_arguments(self) -> str:
        return self._calls[-1]["function"]["arguments"]

    def _stream_call(self, text: str, start: int = 0) -> None:
        """Send what the unfinished call object at text[start:] makes known: its name once the
        arguments object has begun, then the arguments text written so far (of the preferred
        key only, whose text is final)."""
        if self._cursor is not None:        # arguments under way: scan only the new text
            end = self._cursor.advance(text)
            self._send_written(text[self._cursor.start:len(text) if end is None else end])
            return
        scan = scan_object(text, start)
        if not scan.ok:
            return
        span = scan.members.get(self.parser.args_keys[0])
        if span is None or text[span[0]] != "{":
            return
        if not self._header:
            raw = scan.value(text, "name")
            if raw is None or not raw.startswith('"'):
                return
            try:
                name = json.loads(raw)
            except ValueError:
                return
            if not name:
                return
            self._open_call(name)
        if span[1] is None:
            self._cursor = _ValueCursor(span[0])
            self._cursor.advance(text)
        self._send_written(text[span[0]:len(text) if span[1] is None else span[1]])

    def _send_written(self, written: str) -> None:
        sent = self._sent_arguments()
        if len(written) > len(sent) and written.startswith(sent):
            self._add_arguments(written[len(sent):])

    def _finish_call(self, name: str, arguments: str) -> None:
        """A well-formed call is complete: send its header if not yet sent, and the rest."""
        if not self._header:
            self._open_call(name)
        sent = self._sent_arguments()
        if arguments.startswith(sent):
            self._add_arguments(arguments[len(sent):])
        self._end_call()

    def _end_call(self) -> None:
        self._header = False
        self._cursor = None


class HermesStreamingParser(StreamingToolParser):
    """`<tool_call>` JSON `</tool_call>` blocks inside free text."""

    def __init__(self, parser: CallFormat):
        super().__init__(parser)
        self._in_call = False

    def _process(self, final: bool) -> None:
        while True:
            if self._in_call:
                end = self._buf.find(HERMES_END)
                body = self._buf if end < 0 else self._buf[:end]
                self._stream_call(body)
                if end < 0 and not final:
                    return
                self._close_block(body, closed=end >= 0)
                self._buf = "" if end < 0 else self._buf[end + len(HERMES_END):]
                self._in_call = False
                if end < 0:
                    return
                continue
            start = self._buf.find(HERMES_START)
            if start >= 0:
                self._emit_content(self._buf[:start])
                self._buf = self._buf[start + len(HERMES_START):]
                self._in_call = True
                continue
            keep = 0 if final else _partial_suffix(self._buf, HERMES_START)
            self._emit_content(self._buf[:len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            return

    def _close_block(self, body: str, closed: bool) -> None:
        scan = scan_object(body)
        call = call_from_object(body, scan, self.parser.args_keys)
        if call is not None and skip_ws(body, scan.end) == len(body):
            self._finish_call(*call)
        elif not self._header:      # not a call: the block is content, as written
            self._emit_content(HERMES_START + body + (HERMES_END if closed else ""))
        self._end_call()


class Llama3JsonStreamingParser(StreamingToolParser):
    """The whole output is calls (`{"name": ..., "parameters": ...}`, `;`-separated, optionally
    after `<|python_tag|>`) or it is content."""

    def __init__(self, parser: CallFormat):
        super().__init__(parser)
        self._mode = "start"           # start -> calls -> (content), or start -> content
        self._lead = ""                # the whitespace / python tag before the first call

    def _process(self, final: bool) -> None:
        if self._mode == "start":
            i = skip_ws(self._buf, 0)
            head = self._buf[i:]
            if not head or (not final and PYTHON_TAG.startswith(head) and head != PYTHON_TAG):
                if final:
                    self._mode = "calls"     # only whitespace or a partial tag: no content
                else:
                    return
            elif head.startswith(PYTHON_TAG):
                self._lead, self._buf = self._buf[:i + len(PYTHON_TAG)], head[len(PYTHON_TAG):]
                self._mode = "calls"
            elif head.startswith("{"):
                self._lead, self._buf = self._buf[:i], head
                self._mode = "calls"
            else:
                self._mode = "content"
        if self._mode == "calls":
            self._calls_step(final)
        if self._mode == "content":
            self._emit_content(self._buf)
            self._buf = ""

    def _calls_step(self, final: bool) -> None:
        while True:
            j = skip_ws(self._buf, 0)
            if self._calls:
                while j < len(self._buf) and self._buf[j] == ";":
                    j = skip_ws(self._buf, j + 1)
            if j == len(self._buf):
                if final:
                    self._buf = ""
                return
            scan = scan_object(self._buf, j)
            if scan.ok:
                self._stream_call(self._buf, j)
            if scan.ok and scan.end is None and not final:
                return
            call = call_from_object(self._buf, scan, self.parser.args_keys)
            if call is None:
                if self._header:             # its name was sent: keep the call as sent
                    self._end_call()
                    self._buf = self._buf[scan.end:] if scan.end is not None else ""
                    continue
                self._to_content()
                return
            self._finish_call(*call)
            self._buf = self._buf[scan.end:]

    def _to_content(self) -> None:
        """Not a call: the rest of the output (all of it, if no call came first) is content."""
        if not self._calls:
            self._buf = self._lead + self._buf
        self._mode = "content"
