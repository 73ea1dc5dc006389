"""Where sampleattn keeps files by default: the user's cache folder of this platform
(`platformdirs`: ``$XDG_CACHE_HOME/sampleattn``, else ``~/.cache/sampleattn`` on Linux;
``~/Library/Caches/sampleattn`` on macOS), or ``$SAMPLEATTN_CACHE`` when set.

The profile store (``profiles.sqlite``) and the calibration cache (``calibration/``) live
there unless told otherwise (``SAMPLEATTN_STORE``, ``--store``, ``--cache-dir``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$SAMPLEATTN_CACHE`` when set, else the platform's user cache folder for sampleattn."""
    override = os.environ.get("SAMPLEATTN_CACHE")
    if override:
        return Path(override).expanduser()
    import platformdirs  # here, not at import: `import sampleattn` stays light

    return platformdirs.user_cache_path("sampleattn", appauthor=False)
