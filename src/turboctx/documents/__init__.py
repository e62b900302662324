"""Long documents as people have them, for `turboctx ask` and `turboctx chat`: files, PDFs,
stdin and code repositories read into Documents (inputs.py, directory.py, rules.py), put in a
chat prompt split where the question begins (prompt.py), and planned before any weight is
loaded (plan.py: tokens, fit, estimated TTFT and cost)."""
from turboctx.documents.document import Document, DocumentSet, SkippedFile
from turboctx.documents.errors import DocumentError, DocumentsTooLongError
from turboctx.documents.inputs import read_file, read_inputs
from turboctx.documents.directory import read_directory
from turboctx.documents.prompt import (DocumentPrompt, build_document_prompt, conversation_ids,
                                       document_block)

__all__ = ["Document", "DocumentSet", "SkippedFile", "DocumentError", "DocumentsTooLongError",
           "read_file", "read_inputs", "read_directory", "DocumentPrompt", "build_document_prompt",
           "conversation_ids", "document_block"]
