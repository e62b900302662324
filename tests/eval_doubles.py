"""Stand-ins for tests and dry runs: a tokenizer needing no model, and fake targets.

OracleTarget answers by reading the prompt (regex), so a correct harness scores 100% with it;
WrongTarget always answers wrong; DownTarget is unreachable.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from turboctx.eval.targets import PromptTooLong, TargetUnavailable, TokenizerMixin


class WordTokenizer:
    """Whitespace + punctuation + single digits pre-tokens, one id each (ids are hashes):
    close enough to a BPE's count for fitting tests, and instant."""

    def __init__(self):
        from tokenizers import Regex, pre_tokenizers
        self._pre = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"),
            pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)])

    def encode(self, text: str) -> list[int]:
        return [hash(w) & 0xFFFF for w, _ in self._pre.pre_tokenize_str(text)]

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return turns + ("<|assistant|>\n" if add_generation_prompt else "")


class _Fake(TokenizerMixin):
    batch_size = 4

    def __init__(self, tokenizer=None, max_len: int | None = None):
        self.tokenizer = tokenizer or WordTokenizer()
        self.max_len = max_len
        self.calls = 0

    def generate(self, prompts: Sequence[str], max_tokens: int):
        out = []
        for p in prompts:
            self.calls += 1
            if self.max_len is not None and self.count_tokens(p) + max_tokens > self.max_len:
                out.append(PromptTooLong(f"over {self.max_len}"))
            else:
                out.append(self.answer(p))
        return out

    def token_logprobs(self, ids):
        return [-1.0 - 0.1 * (j % 3) for j in range(1, len(ids))]


class OracleTarget(_Fake):
    name = "oracle"

    def answer(self, p: str) -> str:
        if "What is the pass key?" in p:
            return " " + re.search(r"The pass key is (\d+)\. Remember it", p).group(1) + "."
        if "special magic number of the day" in p:
            return " " + re.search(r"special magic number of the day is (\d+)\.", p).group(1)
        if "special magic" in p:  # RULER niah: find the query keys, then their needles
            m = re.search(r"special magic (\w+?)s? for (.+?) mentioned in the provided text\?", p)
            kind, query = m.group(1), m.group(2)
            keys = [k.strip() for k in re.split(r", and |, ", query)]
            vals = [v for k in keys for v in re.findall(
                rf"One of the special magic {kind}s for {re.escape(k)} is: (\S+)\.", p)]
            return " " + ", ".join(vals) + "."
        if "Memorize and track the chain" in p:  # last task: follow the chain from the value
            task = p[p.rindex("Memorize and track"):]
            value = re.search(r"assigned the value (\d+) in the text above", task).group(1)
            found, frontier = [], [value]
            while frontier:
                cur = frontier.pop()
                pat = rf"VAR (\w+) = {cur}\b" if cur.isdigit() else rf"VAR (\w+) = VAR {cur}\b"
                for v in re.findall(pat, task):
                    found.append(v)
                    frontier.append(v)
            return " ".join(found)
        if "Below is a numbered list of words" in p:
            task = p[p.rindex("Below is a numbered list"):]
            words = re.findall(r"\d+\. (\S+)", task.split("Question:")[0])
            return " ".join(f"{i + 1}. {w}" for i, (w, _) in enumerate(Counter(words).most_common(10)))
        if "Read the following coded text" in p:
            text = p.split("coded words. ", 1)[1].split("\nQuestion:")[0]
            c = Counter(w for w in text.split() if w != "...")
            return " ".join(w for w, _ in c.most_common(3))
        return ""


class WrongTarget(_Fake):
    name = "wrong"

    def answer(self, p: str) -> str:
        return " I do not know."


class DownTarget(_Fake):
    name = "down"

    def generate(self, prompts, max_tokens):
        raise TargetUnavailable("cannot reach the fake server")
