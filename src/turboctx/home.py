"""Where turboctx keeps what outlives a process: `$TURBOCTX_HOME`, else
`$XDG_CACHE_HOME/turboctx`, else `~/.cache/turboctx`."""
from __future__ import annotations

import os
from pathlib import Path


def turboctx_home() -> Path:
    if os.environ.get("TURBOCTX_HOME"):
        return Path(os.environ["TURBOCTX_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "turboctx"
    return Path.home() / ".cache" / "turboctx"
