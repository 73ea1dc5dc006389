"""Validation errors that name the field, its valid range and what it means.

`DescribedModel` is the base of the configuration models (`sampleattn.config`). When pydantic
rejects a field that has a ``description``, the error is rewritten from the field's own
metadata, e.g.::

    alpha=1.5 is out of range: alpha must be in (0, 1]; it is the CRA target, ...

instead of pydantic's generic "Input should be less than or equal to 1". The range comes from
the field's constraints (``gt``/``ge``/``lt``/``le``), the meaning from its ``description``, so a
new field needs nothing more than a description. Errors of fields without a description, and
errors raised by the models' own validators (which already say what to fix), pass unchanged.
The result is still a `pydantic.ValidationError` (a `ValueError`) at the same location.
"""

from __future__ import annotations

from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

__all__ = ["DescribedModel", "explain_field_error", "field_range"]

_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def field_range(info: FieldInfo) -> str | None:
    """The valid range of a field from its constraints, e.g. ``"in (0, 1]"`` or ``"at least 16"``;
    ``None`` when it has no numeric bound."""
    low = high = None
    low_open = high_open = False
    for item in info.metadata:
        if isinstance(item, annotated_types.Gt):
            low, low_open = item.gt, True
        elif isinstance(item, annotated_types.Ge):
            low, low_open = item.ge, False
        elif isinstance(item, annotated_types.Lt):
            high, high_open = item.lt, True
        elif isinstance(item, annotated_types.Le):
            high, high_open = item.le, False
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'greater than' if low_open else 'at least'} {_number(low)}"
    if high is not None:
        return f"{'less than' if high_open else 'at most'} {_number(high)}"
    return None


def explain_field_error(name: str, info: FieldInfo, error: dict[str, Any]) -> str | None:
    """The rewritten message of one pydantic error on field ``name``, or ``None`` to keep it."""
    if not info.description:
        return None
    meaning = info.description.rstrip(".")
    shown = f"{name}={error.get('input')!r}"
    if error["type"] in _RANGE_ERRORS and (valid := field_range(info)) is not None:
        return f"{shown} is out of range: {name} must be {valid}; it is {meaning}"
    if error["type"].startswith(("value_error", "assertion_error")):
        return None  # the model's own validators already say what to fix
    return f"{shown} is not valid: {error['msg'][0].lower()}{error['msg'][1:]}; {name} is {meaning}"


class DescribedModel(BaseModel):
    """A pydantic model whose field errors name the field, its range and its description."""

    @model_validator(mode="wrap")
    @classmethod
    def _explain_errors(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            rewritten = []
            changed = False
            for error in exc.errors():
                loc = error["loc"]
                info = cls.model_fields.get(loc[0]) if len(loc) == 1 and isinstance(loc[0], str) else None
                message = explain_field_error(str(loc[0]), info, error) if info is not None else None
                if message is not None:
                    changed = True
                    kind = "field_out_of_range" if error["type"] in _RANGE_ERRORS else "field_invalid"
                    rewritten.append(_custom(kind, message, loc, error.get("input")))
                elif error["type"] in _CUSTOM:  # rewritten by a nested model: keep its text
                    rewritten.append(_custom(error["type"], error["msg"], loc, error.get("input")))
                else:
                    rewritten.append({k: error[k] for k in ("type", "loc", "input", "ctx") if k in error})
            if not changed:
                raise
            raise ValidationError.from_exception_data(cls.__name__, rewritten) from None


_CUSTOM = ("field_out_of_range", "field_invalid")


def _custom(kind: str, message: str, loc: tuple, value: Any) -> dict[str, Any]:
    # No context is passed, so braces in the message (a dict's repr) are not read as a template.
    return {"type": PydanticCustomError(kind, message), "loc": loc, "input": value}
