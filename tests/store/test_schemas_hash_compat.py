"""A config field added in a later version must not invalidate stored profiles' hashes."""

from __future__ import annotations

from sampleattn.config import LayerOverride, ModelAttentionProfile, SampleAttentionConfig
from sampleattn.store.schemas import LATER_CONFIG_FIELDS, content_hash

#: The fields of SampleAttentionConfig in the first release (schema 0001).
V1_FIELDS = {"alpha", "block_m", "block_n", "dense_below", "gqa_granularity", "sample_block", "sample_ratio",
             "segment_rows", "window_ratio"}

#: content_hash of V1_PROFILE computed by the first release's code (commit ceb1249).
V1_PROFILE = ModelAttentionProfile(config=SampleAttentionConfig(alpha=0.9, window_ratio=0.05, dense_below=0),
                                   layers={3: LayerOverride(alpha=0.97)})
V1_HASH = "508dcd3871b711da16b3a9388adffb0ecd41462418bc732f821b1ba7e662d82b"


def test_every_field_added_after_v1_is_listed_with_its_default():
    fields = SampleAttentionConfig.model_fields
    # the selection rule enters the hash through the rule's own hash_fields
    assert set(fields) - V1_FIELDS - {"selection"} == set(LATER_CONFIG_FIELDS)
    for name, default in LATER_CONFIG_FIELDS.items():
        assert fields[name].default == default


def test_a_v1_profile_keeps_the_hash_the_first_release_gave_it():
    assert content_hash(V1_PROFILE) == V1_HASH


def test_later_fields_change_the_hash_only_when_they_change_the_operator():
    base = SampleAttentionConfig(alpha=0.9, window_ratio=0.05, dense_below=0)
    rescored = base.model_copy(update={"selection": "rescored"})
    assert content_hash(ModelAttentionProfile(config=rescored)) != content_hash(ModelAttentionProfile(config=base))
    wider = rescored.model_copy(update={"candidate_alpha": 0.995})
    assert content_hash(ModelAttentionProfile(config=wider)) != content_hash(ModelAttentionProfile(config=rescored))
    # under the paper's rule the rescoring parameters do nothing, so they do not count
    inert = base.model_copy(update={"candidate_alpha": 0.95, "rescore_stride": 4})
    assert content_hash(ModelAttentionProfile(config=inert)) == content_hash(ModelAttentionProfile(config=base))


def test_a_rescored_profile_keeps_the_hash_of_the_flat_fields():
    """Profiles stored when the rescored rule's parameters were flat config fields keep their
    hash: the canonical JSON then held ``selection``, and ``candidate_alpha`` when not 0.999."""
    import hashlib
    import json

    config = SampleAttentionConfig(alpha=0.9, window_ratio=0.05, dense_below=0, selection="rescored",
                                   candidate_alpha=0.995)
    flat = json.loads(ModelAttentionProfile(config=config).model_dump_json())
    flat["config"].update({"selection": "rescored", "candidate_alpha": 0.995})
    flat["config"].pop("dense_above")
    expected = hashlib.sha256(json.dumps(flat, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert content_hash(ModelAttentionProfile(config=config)) == expected


def test_block_rule_parameters_change_the_hash():
    from sampleattn.rules import BlockRule

    base = SampleAttentionConfig(alpha=0.9, selection=BlockRule())
    other = SampleAttentionConfig(alpha=0.9, selection=BlockRule(beta=0.9))
    assert content_hash(ModelAttentionProfile(config=base)) != content_hash(ModelAttentionProfile(config=other))
