"""What can go wrong between the harness and a target, by how the run goes on."""
from __future__ import annotations


class TargetUnavailable(RuntimeError):
    """The target cannot be used as asked (unreachable, or its tokens cannot be counted): the
    run stops before scoring, with this message."""


class TokenizerUnavailable(TargetUnavailable):
    """Neither the server (/tokenize) nor a --tokenizer can say what the served model sees."""


class TokenizerMismatch(TargetUnavailable):
    """--tokenizer counts a prompt otherwise than the server does: not the served model's."""


class PromptTooLong(ValueError):
    """A prompt over the target's context limit: recorded as an error sample (a miss)."""
