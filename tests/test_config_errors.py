"""Config errors name the field, its valid range and what it means (sampleattn/config_errors.py)."""

from __future__ import annotations

import pytest
from pydantic import Field, ValidationError

from sampleattn import SampleAttentionConfig
from sampleattn.config import ModelAttentionProfile
from sampleattn.config_errors import DescribedModel


def test_out_of_range_names_field_range_and_meaning() -> None:
    with pytest.raises(ValidationError) as info:
        SampleAttentionConfig(alpha=1.5)
    text = str(info.value)
    assert "alpha=1.5 is out of range: alpha must be in (0, 1]; it is the CRA target" in text
    assert "attention mass" in text
    assert "less than or equal to 1" not in text  # pydantic's generic wording is replaced
    assert info.value.errors()[0]["loc"] == ("alpha",)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"window_ratio": -0.1}, "window_ratio=-0.1 is out of range: window_ratio must be in [0, 1]"),
    ({"block_m": 8}, "block_m=8 is out of range: block_m must be in [16, 256]"),
    ({"rescore_stride": 0}, "rescore_stride=0 is out of range: rescore_stride must be at least 1"),
    ({"sample_ratio": "many"}, "sample_ratio='many' is not valid: input should be a valid number"),
])
def test_each_described_field(kwargs: dict, expected: str) -> None:
    with pytest.raises(ValidationError, match="it is|is the") as info:
        SampleAttentionConfig(**kwargs)
    assert expected in str(info.value)


def test_own_validators_and_nested_locations_are_kept() -> None:
    with pytest.raises(ValidationError) as info:
        ModelAttentionProfile.model_validate(
            {"config": {"block_m": 48}, "layers": {0: {"alpha": 3, "heads": {1: {"window_ratio": 2}}}}})
    errors = {".".join(map(str, e["loc"])): e["msg"] for e in info.value.errors()}
    assert "must be a power of two" in errors["config.block_m"]  # the model's own message, unchanged
    assert errors["layers.0.alpha"].startswith("alpha=3 is out of range: alpha must be in (0, 1]")
    assert errors["layers.0.heads.1.window_ratio"].startswith("window_ratio=2 is out of range")


def test_a_new_field_needs_only_a_description() -> None:
    class Demo(DescribedModel):
        ratio: float = Field(0.5, gt=0, lt=1, description="a demo share")
        plain: int = Field(1, ge=0)

    with pytest.raises(ValidationError) as info:
        Demo(ratio=1.0, plain=-1)
    messages = [e["msg"] for e in info.value.errors()]
    assert messages[0] == "ratio=1.0 is out of range: ratio must be in (0, 1); it is a demo share"
    assert "greater than or equal to 0" in messages[1]  # no description: pydantic's message stays
