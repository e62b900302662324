"""Tokenizer: a `tokenizers.Tokenizer` plus special tokens and the chat template (jinja2, as HF renders it).

Built from a Hugging Face folder (tokenizer.json, tokenizer_config.json) or from GGUF metadata
(byte-level BPE vocabularies, "gpt2" in llama.cpp's words).
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import tokenizers
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors

from turboctx.errors import ModelLoadError, UnsupportedModelError

# Pre-tokenizer splits named by GGUF `tokenizer.ggml.pre` (regexes of llama.cpp / the HF tokenizer.json files).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_FAMILIES = {
    "gpt2": ("gpt2", "default", "mpt", "olmo", "jais"),
    "digits+gpt2": ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"),
    "llama3": ("llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe", "falcon3"),
    "qwen2": ("qwen2", "deepseek-r1-qwen"),
}
GGUF_PRE_TOKENIZERS = tuple(name for names in _PRE_FAMILIES.values() for name in names)
_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4


class Tokenizer:
    """Text <-> token ids, special tokens and chat formatting for one model."""

    def __init__(self, backend: tokenizers.Tokenizer, *, chat_template: str | None = None,
                 bos_token: str | None = None, eos_token: str | None = None,
                 unk_token: str | None = None, pad_token: str | None = None,
                 eos_token_ids: Iterable[int] = ()):
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = (
            bos_token, eos_token, unk_token, pad_token)
        ids = [backend.token_to_id(eos_token)] if eos_token is not None else []
        self._eos_token_ids = list(dict.fromkeys(i for i in [*ids, *eos_token_ids] if i is not None))

    # ---- encoding -------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(int(i))

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self._eos_token_ids)

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.backend.token_to_id(self.bos_token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    # ---- chat -------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            chat_template: str | None = None, **kwargs: Any) -> str:
        """Render messages with the model's chat template, or with `chat_template` when given
        (e.g. turboctx.structured's tool template). Extra keyword arguments (`tools=[...]`,
        `documents=...`) become template variables, as in transformers."""
        template = chat_template or self.chat_template
        if not template:
            raise ModelLoadError(
                "this model has no chat template (tokenizer_config.json `chat_template`, "
                "chat_template.jinja or GGUF `tokenizer.chat_template`); use a plain prompt")
        special = {"bos_token": self.bos_token, "eos_token": self.eos_token,
                   "unk_token": self.unk_token, "pad_token": self.pad_token}
        variables = {**{k: v for k, v in special.items() if v is not None}, **kwargs}
        return _compile_template(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **variables)

    # ---- constructors -----------------------------------------------------------------
    @classmethod
    def from_hf_folder(cls, path: str | Path) -> "Tokenizer":
        folder = Path(path)
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelLoadError(f"{folder} has no tokenizer.json; only fast (tokenizers) "
                                 f"tokenizers are supported")
        try:
            backend = tokenizers.Tokenizer.from_file(str(tok_file))
        except Exception as e:  # noqa: BLE001 - any parse failure is a load error
            raise ModelLoadError(f"cannot read {tok_file}: {e}") from e
        cfg = _read_json(folder / "tokenizer_config.json")
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default", next(iter(named.values()), None))
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        gen = _read_json(folder / "generation_config.json")
        gen_eos = gen.get("eos_token_id")
        gen_eos = [] if gen_eos is None else [gen_eos] if isinstance(gen_eos, int) else list(gen_eos)
        return cls(backend, chat_template=template,
                   bos_token=_token_str(cfg.get("bos_token")),
                   eos_token=_token_str(cfg.get("eos_token")),
                   unk_token=_token_str(cfg.get("unk_token")),
                   pad_token=_token_str(cfg.get("pad_token")), eos_token_ids=gen_eos)

    @classmethod
    def from_gguf(cls, reader_or_path: Any) -> "Tokenizer":
        reader = reader_or_path
        if isinstance(reader, (str, Path)):
            from turboctx.weights.gguf_reader import GGUFFile

            reader = GGUFFile(reader)
        meta = lambda key, default=None: gguf_value(reader, key, default)  # noqa: E731
        model = meta("tokenizer.ggml.model")
        if model != "gpt2":
            raise UnsupportedModelError(
                f"GGUF tokenizer model {model!r} is not supported; supported: 'gpt2' (byte-level BPE). "
                f"Use the model's Hugging Face folder instead")
        tokens: list[str] = meta("tokenizer.ggml.tokens")
        types: list[int] = meta("tokenizer.ggml.token_type") or [1] * len(tokens)
        merges = [tuple(m.split(" ", 1)) for m in meta("tokenizer.ggml.merges") or []]
        pre = meta("tokenizer.ggml.pre", "default")
        backend = _byte_level_bpe(tokens, types, merges, pre)

        def token(key: str) -> str | None:
            i = meta(f"tokenizer.ggml.{key}")
            return tokens[i] if i is not None and 0 <= i < len(tokens) else None

        bos, eos = token("bos_token_id"), token("eos_token_id")
        add_bos, add_eos = bool(meta("tokenizer.ggml.add_bos_token", False)), bool(
            meta("tokenizer.ggml.add_eos_token", False))
        specials = ([(bos, backend.token_to_id(bos))] if add_bos and bos else []), (
            [(eos, backend.token_to_id(eos))] if add_eos and eos else [])
        single = [s for s, _ in specials[0]] + ["$A"] + [s for s, _ in specials[1]]
        pair = single + [s for s, _ in specials[0]] + ["$B:1"] + [s for s, _ in specials[1]]
        backend.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=list(dict.fromkeys(specials[0] + specials[1])))
        extra_eos = [meta(f"tokenizer.ggml.{k}_token_id") for k in ("eot", "eom")]
        return cls(backend, chat_template=meta("tokenizer.chat_template"), bos_token=bos,
                   eos_token=eos, unk_token=token("unknown_token_id"),
                   pad_token=token("padding_token_id"), eos_token_ids=[i for i in extra_eos if i is not None])


def _byte_level_bpe(tokens: list[str], types: list[int], merges: list[tuple[str, str]],
                    pre: str) -> tokenizers.Tokenizer:
    alphabet = _bytes_to_unicode()
    spelled = set(alphabet.values())
    vocab = {}
    for i, t in enumerate(tokens):
        key = t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8"))
        vocab[key] = i
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges, fuse_unk=False))
    family = next((f for f, names in _PRE_FAMILIES.items() if pre in names), None)
    if family is None:
        raise UnsupportedModelError(
            f"GGUF pre-tokenizer {pre!r} is not supported; supported: {', '.join(GGUF_PRE_TOKENIZERS)}")
    if family == "gpt2":
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif family == "digits+gpt2":
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        split = _LLAMA3_SPLIT if family == "llama3" else _QWEN2_SPLIT
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        if family == "qwen2":
            backend.normalizer = normalizers.NFC()
    backend.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, <|endoftext|>) stay whole and are skipped on decode;
    # user-defined ones (<think>) stay whole too. A "control" token outside the byte
    # alphabet is a converter mislabel and is left alone (as transformers does).
    control = [AddedToken(t, normalized=False, special=True)
               for t, ty in zip(tokens, types) if ty == _TOKEN_CONTROL and set(t) <= spelled]
    user = [AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, types) if ty == _TOKEN_USER_DEFINED and t in vocab]
    if control:
        backend.add_special_tokens(control)
    if user:
        backend.add_tokens(user)
    return backend


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def gguf_value(reader: Any, key: str, default: Any = None) -> Any:
    """A GGUF metadata value as a Python value, from a GGUFFile or a gguf.GGUFReader."""
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents() if hasattr(field, "contents") else field
    return default if value is None else value


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e


def _token_str(value: Any) -> str | None:
    if isinstance(value, dict):  # a serialized AddedToken
        return value.get("content")
    return value


@lru_cache(maxsize=16)
def _compile_template(source: str):
    """Compile a chat template the way transformers does (sandboxed, trim/lstrip blocks)."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):  # `{% generation %}...{% endgeneration %}` renders its body
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
