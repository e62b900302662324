"""Kept contexts: a prompt prefix's KV kept in host RAM and on disk under a name, for later
processes (contexts/store.py; the engine side is engine/kept_contexts.py)."""
from turboctx.contexts.store import ContextMeta, ContextStore

__all__ = ["ContextMeta", "ContextStore"]
