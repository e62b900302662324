"""What a request asks its output to follow: one JSON schema, any JSON object, a regex, a choice of
strings or a grammar (vLLM's `StructuredOutputsParams` names), checked before anything compiles.

`from_response_format` maps OpenAI's `response_format` onto it, so the chat endpoint and the
Python API share one spec.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from turboctx.errors import InvalidRequestError

SPEC_FIELDS = ("json", "json_object", "regex", "choice", "grammar")
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Exactly one of:

    - `json`: a JSON schema, as a dict or its JSON text; the output is one JSON value it accepts;
    - `json_object=True`: any JSON object;
    - `regex`: the whole output matches this regular expression (Rust `regex` syntax);
    - `choice`: the output is exactly one of these strings;
    - `grammar`: a Lark grammar (llguidance's dialect: `start:` rule, `%json {schema}` allowed)
      or a GBNF grammar (`root ::= ...`).

    `disable_any_whitespace`: JSON with no optional whitespace (`{"a":1,"b":[2]}`), which keeps
    small models from wandering into runs of spaces and newlines; otherwise JSON whitespace is free
    between tokens (none before the first `{`), or limited to `whitespace_pattern` (a regex, e.g.
    `[ \n]{0,4}`) where given.
    """

    json: dict | str | None = None
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | tuple[str, ...] | None = None
    grammar: str | None = None
    disable_any_whitespace: bool = False
    whitespace_pattern: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in SPEC_FIELDS if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            which = "none was" if not given else f"{len(given)} were ({', '.join(given)})"
            raise InvalidRequestError(
                f"structured output needs exactly one of {', '.join(SPEC_FIELDS)}; {which} given")
        kind = given[0]
        if kind == "json":
            object.__setattr__(self, "json", _schema_object(self.json))
        elif kind == "json_object":
            _require(self.json_object is True,
                     f"json_object={self.json_object!r} must be True (or left out)")
        elif kind == "regex":
            _require(isinstance(self.regex, str) and self.regex != "",
                     f"regex={self.regex!r} must be a non-empty string")
        elif kind == "choice":
            choices = self.choice
            _require(isinstance(choices, (list, tuple)) and len(choices) > 0,
                     f"choice={choices!r} must be a non-empty list of strings")
            bad = [c for c in choices if not isinstance(c, str) or c == ""]
            _require(not bad, f"choice entries must be non-empty strings; got {bad[0]!r}" if bad else "")
            object.__setattr__(self, "choice", tuple(choices))
        elif kind == "grammar":
            _require(isinstance(self.grammar, str) and self.grammar.strip() != "",
                     f"grammar={self.grammar!r} must be a non-empty Lark or GBNF grammar string")
        _require(isinstance(self.disable_any_whitespace, bool),
                 f"disable_any_whitespace={self.disable_any_whitespace!r} must be a bool")
        _require(self.whitespace_pattern is None or (isinstance(self.whitespace_pattern, str)
                                                     and self.whitespace_pattern != ""),
                 f"whitespace_pattern={self.whitespace_pattern!r} must be a non-empty regex string")
        _require(not (self.disable_any_whitespace and self.whitespace_pattern is not None),
                 "give at most one of disable_any_whitespace and whitespace_pattern")
        _require(kind in ("json", "json_object") or (not self.disable_any_whitespace
                                                     and self.whitespace_pattern is None),
                 f"disable_any_whitespace and whitespace_pattern apply to JSON only, not {kind}")

    def __hash__(self) -> int:        # the json dict is not hashable; its canonical text is
        return hash(self.cache_key())

    @property
    def kind(self) -> str:
        """Which of SPEC_FIELDS this spec uses."""
        return next(name for name in SPEC_FIELDS if getattr(self, name) not in (None, False))

    def cache_key(self) -> tuple:
        """Equal for specs that compile to the same grammar. JSON keys keep their order: the order
        of `properties` is the order the output writes them in."""
        value = getattr(self, self.kind)
        if self.kind == "json":
            value = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return (self.kind, value, self.disable_any_whitespace, self.whitespace_pattern)


def from_response_format(response_format: dict | None) -> StructuredOutputsParams | None:
    """OpenAI `response_format` -> the spec it asks for (None for `{"type": "text"}` or None).

    `{"type": "json_object"}` -> any JSON object; `{"type": "json_schema", "json_schema":
    {"name": ..., "schema": {...}, "strict": ...}}` -> that schema.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequestError(
            f"response_format must be an object with a `type` ({', '.join(RESPONSE_FORMAT_TYPES)}); "
            f"got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise InvalidRequestError(
                "response_format of type json_schema needs `json_schema: {\"name\": ..., "
                "\"schema\": {...}}`; the `schema` is missing")
        return StructuredOutputsParams(json=spec["schema"])
    raise InvalidRequestError(
        f"response_format type {kind!r} is not supported; supported: {', '.join(RESPONSE_FORMAT_TYPES)}")


def _schema_object(schema: Any) -> dict:
    """A JSON schema as a dict, or an error saying why it is not one."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as e:
            raise InvalidRequestError(f"json schema is not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise InvalidRequestError(
            f"json schema must be a JSON object (a dict), got {type(schema).__name__}: {schema!r:.80}")
    return schema


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise InvalidRequestError(msg)
