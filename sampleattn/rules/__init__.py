"""Selection rules: how the operator chooses the keys beyond each row's window.

==========  ==================================================================================
rule        what it keeps beyond the window
==========  ==================================================================================
sampled     the paper's rule: stripe columns scored by a few sampled rows, up to alpha
rescored    the sampled rule's candidates at a higher alpha, re-ranked by every query row
block       stripe columns (sampled rule) plus key blocks chosen per query block from every
            row's scores against mean-pooled keys, up to a block-mass target beta
==========  ==================================================================================

``SampleAttentionConfig(selection=BlockRule(beta=0.95))``; a name stands for the rule with its
defaults (``selection="block"``). A new rule is a module here (a `SelectionRule` subclass with a
``name`` literal) and one entry in `RULES`.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from .base import SelectionRule
from .block import BlockRule
from .rescored import RescoredRule
from .sampled import SampledRule

__all__ = ["LEGACY_FIELDS", "RULES", "BlockRule", "RescoredRule", "SampledRule", "SelectionRule",
           "SelectionRuleField", "rule_from", "rule_names"]

#: Every rule, by name.
RULES: dict[str, type[SelectionRule]] = {rule.model_fields["name"].default: rule
                                         for rule in (SampledRule, RescoredRule, BlockRule)}

#: The config's ``selection`` field: one of the rules, told apart by ``name`` in JSON.
SelectionRuleField = Annotated[Union[tuple(RULES.values())], Field(discriminator="name")]

#: Rule parameters that earlier versions kept as flat config fields, and their rule.
LEGACY_FIELDS = {"candidate_alpha": "rescored", "rescore_stride": "rescored"}


def rule_names() -> tuple[str, ...]:
    return tuple(RULES)


def rule_from(value: Any = "sampled", **params: Any) -> SelectionRule | Any:
    """A rule from a rule, a name (with optional parameters) or a JSON object.

    Flat parameters of earlier versions (``candidate_alpha=...``) go to the rule that owns them;
    under another rule they mean nothing and are dropped (as they did then).
    """
    if isinstance(value, str):
        rule = RULES.get(value)
        if rule is None:
            raise ValueError(f"selection={value!r} is not a selection rule; choose one of {', '.join(RULES)}")
        value = rule()
    if not isinstance(value, SelectionRule):
        return value  # a mapping: the discriminated union validates it
    owned = {k: v for k, v in params.items() if k in type(value).model_fields}
    for name, v in params.items():
        if name not in owned:  # another rule's parameter: meaningless here, but still a valid value
            RULES[LEGACY_FIELDS[name]].model_validate({name: v})
    return type(value).model_validate({**dict(value), **owned}) if owned else value
