"""The models of an accuracy evaluation: one per RoPE setting, loaded or derived once, kept for
every tier."""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import torch

from .settings import EvalSettings

__all__ = ["ModelCache"]


class ModelCache:
    """One model per RoPE setting (lengths beyond the trained context need scaling), all kept:
    the tiers come back to every length.

    For the llama and qwen2 families a scaled model is derived from the first loaded one (its
    config with `configure_rope`, the same weights) instead of reading and de-quantising the
    weights again: the same model as ``load_model(max_length=...)``, checked by
    ``tests/integrations/test_eval.py``.
    """

    DERIVABLE = ("llama", "qwen2")

    def __init__(self, settings: EvalSettings, log: Callable[[str], None], preloaded=None) -> None:
        from sampleattn.models.catalog import get_model_spec

        self.settings = settings
        self.log = log
        self.spec = get_model_spec(settings.model)
        self.models: dict[str, tuple[Any, Any, Any]] = {}
        self.load_seconds: list[float] = []
        if preloaded is not None:
            model, tokenizer = preloaded
            self.models[repr(self._scaling(None))] = (model, tokenizer, None)

    def _scaling(self, length: int | None):
        from sampleattn.models.loading import rope_scaling_for

        return rope_scaling_for(self.spec, length, self.settings.rope_scaling)

    def loaded(self, length: int) -> bool:
        return repr(self._scaling(length)) in self.models

    def expected_load_s(self, length: int) -> float:
        return 0.0 if self.loaded(length) else max(self.load_seconds, default=0.0)

    def tokenizer(self, length: int):
        if self.models:
            return next(iter(self.models.values()))[1]
        return self.get(length)[1]

    def get(self, length: int):
        from sampleattn.models.loading import load_model

        scaling = self._scaling(length)
        key = repr(scaling)
        if key not in self.models:
            t0 = time.time()
            base = next(iter(self.models.values()), None)
            if base is not None and scaling is not None and self.spec.family in self.DERIVABLE:
                model, tokenizer, how = self._derive(base[0], length), base[1], "derived from the loaded weights"
            else:
                model, tokenizer = load_model(
                    self.spec, model_path=self.settings.model_path, device=self.settings.device,
                    dtype=getattr(torch, self.settings.dtype), max_length=length if scaling else None,
                    rope_scaling=self.settings.rope_scaling)
                how = "loaded"
            self.models[key] = (model, tokenizer, scaling)
            self.load_seconds.append(time.time() - t0)
            self.log(f"{how} {self.spec.name} (rope scaling {scaling}) in {time.time() - t0:.1f}s")
        return self.models[key]

    def _derive(self, base: Any, length: int) -> Any:
        """``base`` with the RoPE scaling of ``length``: a new model of the scaled config holding
        base's weights (the rotary tables are buffers of the new config, not copied)."""
        from transformers import AutoModelForCausalLM

        from sampleattn.models.loading import configure_rope

        config = copy.deepcopy(base.config)
        configure_rope(config, self.spec, max_length=length, method=self.settings.rope_scaling)
        dtype = next(base.parameters()).dtype
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
        state = {k: v for k, v in base.state_dict().items() if "rotary_emb" not in k}
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if "rotary_emb" not in k and k != "lm_head.weight"]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"deriving the scaled model: missing {missing[:5]}, unexpected "
                               f"{list(result.unexpected_keys)[:5]}")
        model.tie_weights()
        return model.to(self.settings.device).eval()
