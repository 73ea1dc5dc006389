"""Integrations of SampleAttention with model libraries.

* `sampleattn.integrations.transformers`: an attention implementation for Hugging Face
  transformers models that route attention through ``transformers.AttentionInterface`` (the
  Llama, Qwen2 and Mistral families, SmolLM2 among them): ``register()``, ``patch_model()``.

Submodules are imported on demand, so ``import sampleattn.integrations`` imports nothing heavy.
"""

from __future__ import annotations

__all__ = ["transformers"]
