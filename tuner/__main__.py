"""``python -m sampleattn.tuner``: the ``sattn-tune`` command line."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
