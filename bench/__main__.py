"""``python -m sampleattn.bench`` runs `sattn-bench`."""

import sys

from .cli import main

sys.exit(main())
