"""Engine options: each defined once, as a field of a config section (sections.py), with its type,
default, help text and limits. `LLM(...)` keywords, the flags of every command that runs a model
and `name=value` texts (`turboctx eval ppl --setting`) are all read through this table.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turboctx.errors import InvalidRequestError

# Options that changed their name: the error says the new one.
RENAMED = {
    "prefill_chunk_size": "max_num_batched_tokens",
    "original_max_position_embeddings": "dca_original_max_position_embeddings",
    "cuda_graphs": "enforce_eager (CUDA graphs are on wherever they run; enforce_eager=True turns "
                   "them off)",
    "compile_kernels": "enforce_eager",
}
# Options that are gone, and why.
REMOVED = {
    "dca_yarn": "YaRN's logit scale is part of DCA (off only when a model's "
                "dual_chunk_attention_config gives no original_max_position_embeddings)",
    "dca_yarn_per_position": "YaRN's scale always comes from each query's own position "
                             "(the prompt-length rule cost 0.6 nats at 0-2K tokens)",
    "dca_selection": "sparse patterns with DCA are always selected at the positions DCA attends with",
}
SIZE_SUFFIXES = {"k": 1024, "m": 1024 * 1024}


def option(default: Any, help: str, *, choices: tuple | None = None, minimum: float | None = None,
           maximum: float | None = None, size: bool = False, flags: tuple[str, ...] = (),
           aliases: dict[str, str] | None = None) -> Any:
    """A config section field that is an engine option. size: its text may end in k / m (1024s);
    aliases: other spellings of a choice; flags: extra command-line flags (e.g. "-tp")."""
    return field(default=default, metadata={"option": dict(
        help=help, choices=choices, minimum=minimum, maximum=maximum, size=size, flags=flags,
        aliases=aliases or {})})


@dataclass(frozen=True)
class OptionSpec:
    name: str
    section: str                  # the EngineConfig field holding its section
    type: type                    # bool | int | float | str
    optional: bool                # None allowed: derived from the model or the device
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    size: bool = False
    flags: tuple[str, ...] = ()
    aliases: dict = field(default_factory=dict)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """The value, normalized (an alias becomes its choice, a Path its text); raises
        InvalidRequestError naming the option and what it allows."""
        if value is None:
            if self.optional:
                return None
            raise InvalidRequestError(f"{self.name}=None is not allowed; give {self._what()}")
        if self.type is bool:
            if not isinstance(value, bool):
                raise InvalidRequestError(f"{self.name}={value!r} must be True or False")
            return value
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidRequestError(f"{self.name}={value!r} must be {self._what()}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRequestError(f"{self.name}={value!r} must be {self._what()}")
            value = float(value)
        elif self.type is str:
            if isinstance(value, Path):
                value = str(value)
            if not isinstance(value, str):
                raise InvalidRequestError(f"{self.name}={value!r} must be {self._what()}")
            value = self.aliases.get(value.lower(), value)
            if self.optional and self.choices is not None and value.lower() == "none":
                return None                    # e.g. quantization=none: unset
            if self.choices is not None and value not in self.choices:
                raise InvalidRequestError(f"{self.name}={value!r} is not one of "
                                          f"{', '.join(self.choices)}")
        if self.minimum is not None and value < self.minimum or \
                self.maximum is not None and value > self.maximum:
            raise InvalidRequestError(f"{self.name}={value!r} must be {self._what()}")
        return value

    def parse(self, text: str) -> Any:
        """A value from command-line or `name=value` text (sizes like 128k where allowed)."""
        t = text.strip()
        if self.optional and t.lower() in ("none", "auto") and self.type is not str:
            return None
        if self.type is bool:
            low = t.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise InvalidRequestError(f"{self.name}={text!r} must be true or false")
        if self.type is int:
            return self.check(parse_size(t, self.name) if self.size else _number(t, int, self))
        if self.type is float:
            return self.check(_number(t, float, self))
        return self.check(t)

    def _what(self) -> str:
        kind = {bool: "True or False", int: "an int", float: "a number", str: "a string"}[self.type]
        if self.minimum is not None and self.maximum is not None:
            kind += f" in [{self.minimum:g}, {self.maximum:g}]"
        elif self.minimum is not None:
            kind += f" >= {self.minimum:g}"
        return kind + (" (or None: from the model)" if self.optional else "")


def _number(text: str, kind: type, spec: OptionSpec):
    try:
        return kind(text)
    except ValueError:
        raise InvalidRequestError(f"{spec.name}={text!r} must be {spec._what()}") from None


def parse_size(text: str, name: str = "size") -> int:
    """'32768', '32k', '1m', '1.5k' -> tokens (k = 1024)."""
    t = str(text).strip().lower().replace("_", "")
    mult = SIZE_SUFFIXES.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in SIZE_SUFFIXES else t
    try:
        value = float(digits) * mult
    except ValueError:
        raise InvalidRequestError(f"{name}={text!r} is not a size (use e.g. 32768, 32k or 1m)") from None
    if value != int(value):
        raise InvalidRequestError(f"{name}={text!r} is not a whole number of tokens")
    return int(value)


def section_specs(section_name: str, cls: type) -> list[OptionSpec]:
    """The options of one config section, in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("option")
        if meta is None:
            continue
        base, optional = _base_type(hints[f.name])
        out.append(OptionSpec(f.name, section_name, base, optional, f.default, **meta))
    return out


def _base_type(hint) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if args and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return hint, False


class OptionTable:
    """Every engine option by name."""

    def __init__(self, specs: list[OptionSpec]):
        self.specs = {s.name: s for s in specs}
        assert len(self.specs) == len(specs), "option names must be unique across sections"

    def __iter__(self):
        return iter(self.specs.values())

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def __getitem__(self, name: str) -> OptionSpec:
        return self.specs[name]

    def spec(self, name: str) -> OptionSpec:
        """The option called `name`; an unknown name is an error naming the closest known one."""
        if name in self.specs:
            return self.specs[name]
        if name in RENAMED:
            raise InvalidRequestError(f"unknown engine option {name!r}: it is now {RENAMED[name]}")
        if name in REMOVED:
            raise InvalidRequestError(f"unknown engine option {name!r}: it was removed; {REMOVED[name]}")
        close = difflib.get_close_matches(name, self.specs, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(self.specs)}"
        raise InvalidRequestError(f"unknown engine option {name!r}{hint}")

    def by_section(self, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """{name: value} -> {section: {name: value}}, every name checked first."""
        out: dict[str, dict[str, Any]] = {}
        for name, value in options.items():
            out.setdefault(self.spec(name).section, {})[name] = value
        return out

    def parse_assignments(self, text: str) -> dict[str, Any]:
        """'dca=true,attention=sparse' -> {'dca': True, 'attention': 'sparse'} (typed, checked)."""
        out = {}
        for item in (x.strip() for x in text.split(",")):
            if not item:
                continue
            name, eq, value = item.partition("=")
            if not eq:
                raise InvalidRequestError(f"{item!r} is not name=value (e.g. dca=true)")
            name = name.strip().replace("-", "_")
            out[name] = self.spec(name).parse(value)
        return out
