"""Documents and a question into token ids, split where the question begins.

The user message is every document's block, then the question. With several documents each
block is headed by its name; a single document is its text alone (a small model given one headed
file tends to recite it instead of answering):

    === path/to/first.py ===
    <its text>
    === second.pdf ===
    [page 1]
    <its text>

    Question: <the question>

The chat template is rendered once with marks in place of the documents and of the question; the
rendered text is cut at the marks into the template's head (before the documents), the text
between the documents and the question ("\\nQuestion:") and the tail (after the question, up to
and including the assistant header). Each piece is tokenized on its own and the ids joined:

    prefix_ids   = head + document blocks + "\\nQuestion:"      (the same for every question)
    question_ids = " <question>" + tail
    prompt_ids   = prefix_ids + question_ids

so a second question about the same documents has exactly the same prefix_ids (what a kept
context stores the KV of), and each document's token count is that of its own block. The
template's text keeps its special tokens; a document's text is plain text (tokens.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from turboctx.documents.document import Document
from turboctx.documents.errors import DocumentError
from turboctx.documents.tokens import encode_documents, encode_template
from turboctx.tokenizer import Tokenizer

QUESTION_LABEL = "\nQuestion:"
_DOCUMENTS_MARK = "\u27e6turboctx:documents\u27e7"
_QUESTION_MARK = "\u27e6turboctx:question\u27e7"


@dataclass(frozen=True)
class PromptFrame:
    """The chat template around the documents and the question, as rendered text."""
    head: str            # up to the user message's content
    between: str         # after the documents, before the question (" <question>" follows)
    tail: str            # after the question: end of turn, assistant header
    system: str | None   # the system message rendered in head (None: the template's default)


@dataclass(frozen=True)
class DocumentPrompt:
    prefix_ids: list[int]                  # head + documents + between: independent of the question
    question_ids: list[int]                # " <question>" + tail
    document_names: tuple[str, ...]
    per_document_tokens: tuple[int, ...]   # tokens of each document's block, in order
    frame: PromptFrame

    @property
    def prompt_ids(self) -> list[int]:
        return self.prefix_ids + self.question_ids

    @property
    def document_tokens(self) -> int:
        return sum(self.per_document_tokens)

    @property
    def template_tokens(self) -> int:
        """Tokens that are no document: the chat template and the question."""
        return len(self.prefix_ids) + len(self.question_ids) - self.document_tokens


def document_block(document: Document, headed: bool = True) -> str:
    """'=== name ===\\n<text>' (headed) or '<text>', ending with exactly one added newline if the
    text has none."""
    text = document.text
    ending = "" if not text or text.endswith("\n") else "\n"
    return (f"=== {document.name} ===\n" if headed else "") + f"{text}{ending}"


def names_blocks(documents: list[Document]) -> bool:
    """Blocks carry their names when there is more than one (module doc)."""
    return len(documents) > 1


def documents_text(documents: list[Document]) -> str:
    """The documents part of the user message, as the model reads it."""
    return "".join(document_block(d, names_blocks(documents)) for d in documents)


def build_document_prompt(tokenizer: Tokenizer, documents: list[Document], question: str,
                          *, system: str | None = None) -> DocumentPrompt:
    """Token ids of the chat prompt asking `question` about `documents` (module doc): prefix_ids
    do not depend on the question. system: a system message (default: the template's own)."""
    if tokenizer is None:
        raise DocumentError("this model has no tokenizer, so documents cannot be put in a prompt")
    frame = render_frame(tokenizer, system)
    blocks = encode_documents(tokenizer, [document_block(d, names_blocks(documents)) for d in documents])
    prefix = encode_template(tokenizer, frame.head)
    for ids in blocks:
        prefix += ids
    prefix += encode_template(tokenizer, frame.between)
    return DocumentPrompt(prefix_ids=prefix,
                          question_ids=encode_template(tokenizer, f" {question.strip()}{frame.tail}"),
                          document_names=tuple(d.name for d in documents),
                          per_document_tokens=tuple(len(ids) for ids in blocks), frame=frame)


def render_frame(tokenizer: Tokenizer, system: str | None) -> PromptFrame:
    rendered = tokenizer.apply_chat_template(
        _messages(system, _DOCUMENTS_MARK + QUESTION_LABEL + _QUESTION_MARK, []))
    head, rest = _split_once(rendered, _DOCUMENTS_MARK)
    between, tail = _split_once(rest, _QUESTION_MARK)
    return PromptFrame(head, between, tail, system)


def conversation_ids(tokenizer: Tokenizer, prompt: DocumentPrompt, turns: list[dict]) -> list[int]:
    """Token ids of a conversation about the documents: turns are the messages after them
    ({"role", "content"}, the first a user's: its content is the first question). The ids start
    with prompt.prefix_ids exactly; with one turn they are build_document_prompt's prompt_ids
    for that question."""
    if not turns or turns[0].get("role") != "user":
        raise DocumentError("a conversation about documents starts with a user message")
    first = {"role": "user", "content": _DOCUMENTS_MARK + QUESTION_LABEL
             + f" {str(turns[0]['content']).strip()}"}
    rendered = tokenizer.apply_chat_template(_messages(prompt.frame.system, first["content"], turns[1:]))
    head, rest = _split_once(rendered, _DOCUMENTS_MARK)
    if head != prompt.frame.head or not rest.startswith(prompt.frame.between):
        raise DocumentError("this model's chat template renders the first message differently "
                            "once the conversation goes on, so the documents cannot stay a fixed "
                            "prefix; ask one question at a time (turboctx ask)")
    return prompt.prefix_ids + encode_template(tokenizer, rest[len(prompt.frame.between):])


def _messages(system: str | None, first_content: str, rest: list[dict]) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": first_content}] + list(rest)


def _split_once(text: str, mark: str) -> tuple[str, str]:
    if text.count(mark) != 1:
        raise DocumentError("this model's chat template does not show the user message as given "
                            "(it changes or repeats it), so documents cannot be placed in it")
    before, after = text.split(mark)
    return before, after
