"""A request's output text, grown token by token at a cost that does not depend on how long the
output already is: tokenizers' DecodeStream decodes only the newest tokens, and stop strings are
looked for only where they could newly end (the new text and the characters just before it).

The text grows only by whole characters: a token that ends inside a multi-byte character adds
nothing until the character is complete. If the output ends there, `finish` decodes it once in
full, so the final text is exactly the tokenizer's decode of every output token.
"""
from __future__ import annotations

from tokenizers.decoders import DecodeStream

from turboctx.engine.outputs import Grown
from turboctx.engine.sampling_params import SamplingParams


class IncrementalDetokenizer:
    def __init__(self, tokenizer, params: SamplingParams):
        self.tokenizer = tokenizer
        self.skip_special_tokens = params.skip_special_tokens
        self.stream = DecodeStream(skip_special_tokens=params.skip_special_tokens)
        self.stops = list(params.stop)
        self.include_stop = params.include_stop_str_in_output
        self.longest_stop = max((len(s) for s in self.stops), default=0)
        self.pieces: list[str] = []     # the text, append-only (outputs read it at a length)
        self.tail = ""                  # its last longest_stop - 1 characters
        self.final: str | None = None   # the whole text, once cut at a stop or completed
        self.pending = False            # the last token ended inside a character

    @property
    def text(self) -> str:
        return self.final if self.final is not None else "".join(self.pieces)

    def grown_text(self) -> Grown | str:
        return self.final if self.final is not None else Grown.of(self.pieces)

    def add(self, token: int) -> str | None:
        """Appends one token; returns the stop string it completed (the text then ends at it)."""
        piece = self.stream.step(self.tokenizer.backend, token)
        self.pending = piece is None
        if not piece:
            return None
        self.pieces.append(piece)
        if not self.stops:
            return None
        window = self.tail + piece      # where a stop string can newly end
        for s in self.stops:             # the first in the order given, as vLLM
            i = window.find(s)
            if i >= 0:
                cut = len(self.text) - len(window) + i + (len(s) if self.include_stop else 0)
                self.final = self.text[:cut]
                return s
        self.tail = window[len(window) - self.longest_stop + 1:] if self.longest_stop > 1 else ""
        return None

    def finish(self, token_ids: list[int]) -> None:
        """The output ended (not at a stop string): complete a character left open."""
        if self.pending and self.final is None:
            self.final = self.tokenizer.decode(token_ids, skip_special_tokens=self.skip_special_tokens)
