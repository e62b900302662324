"""The turboctx home folder: measured prefill rates (`prefill_rates.json`, written by `turboctx
bench prefill`, read by the plan of `turboctx ask`) and kept contexts (`contexts/`).

`$TURBOCTX_HOME`, else `$XDG_CACHE_HOME/turboctx`, else `~/.cache/turboctx`. Nothing creates it
until something is written there.
"""
from __future__ import annotations

import os
from pathlib import Path


def turboctx_home() -> Path:
    """The folder turboctx keeps its own files in (not created here)."""
    home = os.environ.get("TURBOCTX_HOME")
    if home:
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    if cache:
        return Path(cache).expanduser() / "turboctx"
    return Path.home() / ".cache" / "turboctx"
