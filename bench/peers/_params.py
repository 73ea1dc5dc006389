"""A peer's parameters: its defaults, then a named preset's values, then single overrides."""

from __future__ import annotations

__all__ = ["resolve_params"]


def resolve_params(peer: str, defaults: dict, presets: dict[str, dict], preset: str | None, default_preset: str,
                   overrides: dict) -> dict:
    """``{**defaults, **presets[preset or default_preset], **overrides}``; an unknown preset or
    parameter name is refused with the known ones (``peer`` names the peer in the message)."""
    if preset is not None and preset not in presets:
        raise ValueError(f"unknown {peer} preset {preset!r}; choose from {sorted(presets)}")
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {peer} parameters {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **presets[preset or default_preset], **overrides}
