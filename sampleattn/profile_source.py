"""Where `SampleAttention.from_profile` finds tuned profiles, without the core importing the store.

The core defines what a tuned profile is (`TunedProfile`) and asks for one through the
entry-point group ``sampleattn.profile_sources``. The profile store registers itself there
(pyproject.toml: ``store = "sampleattn.store.profile_source:load_tuned_profile"``), so the
dependency points from the store down to the core, and any installed package can provide
profiles the same way. A source is a callable::

    source(model: str, seq_len: int | str | None, store, *, allow_synthetic: bool) -> TunedProfile
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .config import ModelAttentionProfile
from .geometry import Geometry

__all__ = ["DEFAULT_SOURCE", "GROUP", "TunedProfile", "load_tuned_profile"]

#: The entry-point group that profile sources register under.
GROUP = "sampleattn.profile_sources"

#: The source `SampleAttention.from_profile` uses: the profile store.
DEFAULT_SOURCE = "store"


@dataclass(frozen=True)
class TunedProfile:
    """A tuned profile as a source hands it to the operator.

    Attributes:
        profile: the per-layer (and per-head) configuration.
        geometry: the geometry of the model it was tuned on.
        source: the source's own record of it (the store's ``ProfileRecord``: length, run,
            calibration kind, metrics), kept on the operator as ``SampleAttention.source``.
    """

    profile: ModelAttentionProfile
    geometry: Geometry
    source: Any = None


def load_tuned_profile(model: str, seq_len: int | str | None, store: Any = None, *,
                       allow_synthetic: bool = False, source: str = DEFAULT_SOURCE) -> TunedProfile:
    """The tuned profile of ``model`` for ``seq_len`` from the registered source named ``source``.

    ``store`` is passed to the source as is (for the profile store: a ``ProfileStore``, a
    SQLAlchemy URL, or None for the default store). Raises `LookupError` when no installed
    package registers that source.
    """
    found = entry_points(group=GROUP, name=source)
    if not found:
        raise LookupError(
            f"no profile source {source!r} is registered under the entry-point group {GROUP!r}: "
            "sampleattn's metadata is older than its code; reinstall it (pip install -e '.[tune]' "
            "in a checkout), which registers the profile store as the source 'store'"
        )
    loader = next(iter(found)).load()
    tuned = loader(model, seq_len, store, allow_synthetic=allow_synthetic)
    if not isinstance(tuned, TunedProfile):
        raise TypeError(f"the profile source {source!r} returned {type(tuned).__name__}, not a TunedProfile")
    return tuned
