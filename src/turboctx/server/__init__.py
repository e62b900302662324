"""OpenAI-compatible HTTP server (FastAPI): `turboctx serve`."""
