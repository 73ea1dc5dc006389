"""A config field added in a later version must not invalidate stored profiles' hashes."""

from __future__ import annotations

from sampleattn.config import ModelAttentionProfile, SampleAttentionConfig
from sampleattn.store.schemas import LATER_CONFIG_FIELDS, content_hash


def test_every_later_field_exists_with_the_listed_default():
    fields = SampleAttentionConfig.model_fields
    for name, default in LATER_CONFIG_FIELDS.items():
        assert name in fields and fields[name].default == default


def test_later_fields_at_their_default_leave_the_hash_unchanged_and_otherwise_change_it():
    profile = ModelAttentionProfile(config=SampleAttentionConfig(alpha=0.9))
    rescored = ModelAttentionProfile(config=SampleAttentionConfig(alpha=0.9, selection="rescored"))
    assert content_hash(profile) != content_hash(rescored)
    explicit = ModelAttentionProfile(config=SampleAttentionConfig(alpha=0.9, selection="sampled", rescore_stride=1))
    assert content_hash(profile) == content_hash(explicit)
