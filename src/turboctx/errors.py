"""Typed exceptions. Every message names the offending value and what is allowed."""


class TurboctxError(Exception):
    """Base class of every error turboctx raises on purpose."""


class ModelLoadError(TurboctxError):
    """The model spec, its files or its format cannot be used."""


class UnsupportedModelError(ModelLoadError):
    """An architecture, tensor type or option we do not implement."""


class InvalidRequestError(TurboctxError, ValueError):
    """A prompt or sampling parameter is out of range."""


class PromptTooLongError(InvalidRequestError):
    """The prompt (plus the tokens asked for) does not fit max_model_len."""

    def __init__(self, prompt_len: int, max_tokens: int, max_model_len: int):
        self.prompt_len, self.max_tokens, self.max_model_len = prompt_len, max_tokens, max_model_len
        if prompt_len >= max_model_len:
            msg = (f"prompt has {prompt_len} tokens but max_model_len is {max_model_len}; "
                   f"shorten the prompt or raise max_model_len")
        else:
            msg = (f"prompt of {prompt_len} tokens + max_tokens {max_tokens} = "
                   f"{prompt_len + max_tokens} exceeds max_model_len {max_model_len}; "
                   f"lower max_tokens to at most {max_model_len - prompt_len} or raise max_model_len")
        super().__init__(msg)


class OutOfCacheError(TurboctxError):
    """The KV cache cannot hold a request even when empty."""


class TensorParallelError(TurboctxError):
    """A tensor-parallel rank failed (or could not start); every rank has been stopped."""
