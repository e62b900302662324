"""vLLM's tokenizer endpoints: POST /tokenize, POST /detokenize, GET /tokenizer_info (what
lm-evaluation-harness's remote tokenizer and length-fitting clients call)."""
from __future__ import annotations

from turboctx.server.chat_template import chat_prompt
from turboctx.server.errors import APIError
from turboctx.server.protocol import DetokenizeRequest, TokenizeRequest
from turboctx.server.responses import DetokenizeResponse, TokenizeResponse, TokenizerInfo
from turboctx.server.serving_common import ServerState, require_tokenizer, tokenize


async def create_tokenize(state: ServerState, body: TokenizeRequest) -> TokenizeResponse:
    state.check_model(body.model, optional=True)
    if (body.prompt is None) == (body.messages is None):
        raise APIError("give exactly one of prompt (a text) or messages (a chat)", 400,
                       param="prompt" if body.prompt is None else "messages")
    if body.prompt is not None:
        text, special = body.prompt, body.add_special_tokens is not False
    else:
        if not body.messages:
            raise APIError("messages is empty; give at least one message", 400, param="messages")
        text = chat_prompt(state, body.messages, add_generation_prompt=body.add_generation_prompt is not False,
                           continue_final_message=bool(body.continue_final_message), tools=body.tools,
                           chat_template_kwargs=body.chat_template_kwargs)
        special = bool(body.add_special_tokens)
    ids = await tokenize(state, text, add_special_tokens=special)
    strs = [state.token_str(t) for t in ids] if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=state.max_model_len, tokens=ids,
                            token_strs=strs)


async def create_detokenize(state: ServerState, body: DetokenizeRequest) -> DetokenizeResponse:
    state.check_model(body.model, optional=True)
    tk = require_tokenizer(state, "token ids cannot be turned into text here")
    bad = [t for t in body.tokens if not 0 <= t < state.vocab_size]
    if bad:
        raise APIError(f"token id {bad[0]} is outside the vocabulary [0, {state.vocab_size})", 400,
                       param="tokens")
    return DetokenizeResponse(prompt=tk.decode(body.tokens, skip_special_tokens=False))


def tokenizer_info(state: ServerState) -> TokenizerInfo:
    tk = require_tokenizer(state, "there is no tokenizer to describe")
    return TokenizerInfo(model_max_length=state.max_model_len, vocab_size=tk.vocab_size,
                         bos_token=tk.bos_token, eos_token=tk.eos_token, pad_token=tk.pad_token,
                         unk_token=tk.unk_token, chat_template=state.chat_template_text())
