"""The profile store as the source of `SampleAttention.from_profile`.

Registered in pyproject.toml under the entry-point group ``sampleattn.profile_sources`` (name
``store``); the core finds it there (`sampleattn.profile_source`), so it never imports the store.
"""

from __future__ import annotations

from typing import Any

from sampleattn.geometry import Geometry
from sampleattn.lengths import parse_length
from sampleattn.profile_source import TunedProfile

from .store import ProfileStore

__all__ = ["load_tuned_profile"]


def load_tuned_profile(model: str, seq_len: int | str | None, store: Any = None, *,
                       allow_synthetic: bool = False) -> TunedProfile:
    """The profile the store's bucket rule picks for ``model`` at ``seq_len``, read-only.

    Args:
        model: the model's catalogue name (``"smollm2-135m"``).
        seq_len: the prompt length to serve (``"32k"``, ``32768``...); None picks the longest
            tuned length.
        store: a `ProfileStore` (left open), a SQLAlchemy URL or None for the default store
            (opened read-only and closed here).
        allow_synthetic: accept a profile tuned on synthetic calibration data.
    """
    owned = store is None or isinstance(store, str)
    if owned:
        store = ProfileStore(store, readonly=True)
    try:
        if seq_len is None:
            lengths = store.tuned_lengths(model)
            if not lengths:
                raise ValueError(f"the store has no profile for {model!r}; run sattn-tune --model {model}")
            seq_len = max(lengths)
        record = store.get_profile(model, parse_length(seq_len), allow_synthetic=allow_synthetic)
        info = store.get_model(model)
    finally:
        if owned:
            store.close()
    geometry = Geometry(info.num_layers, info.num_q_heads, info.num_kv_heads, info.head_dim)
    return TunedProfile(profile=record.config, geometry=geometry, source=record)
