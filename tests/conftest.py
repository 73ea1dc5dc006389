"""Test-session set-up shared by every test folder.

Without a CUDA GPU, the Triton kernels run under Triton's interpreter: the switch must be on
before `sampleattn.kernels` is first imported, so it is set here, at collection time.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
