"""Models: registering, reading and deleting them (a mixin of `ProfileStore`).

A model is the natural key of everything else (its runs, its profiles); `model_id` is how the
other parts find one by name, with a message that lists the names the store knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .base import StoreBase
from .errors import ModelNotFoundError
from .models import ModelRow
from .schemas import ModelInfo, utcnow

__all__ = ["ModelMethods", "model_id", "model_info", "model_names", "write_model"]


def model_info(row: ModelRow) -> ModelInfo:
    """The record of a model row (the columns are the record's fields)."""
    return ModelInfo.model_validate(row, from_attributes=True)


def model_names(session: Session) -> list[str]:
    """The names of the store's models, sorted."""
    return list(session.execute(select(ModelRow.name).order_by(ModelRow.name)).scalars())


def model_id(session: Session, name: str, where: str) -> int:
    """The id of the model ``name`` (`ModelNotFoundError`, naming the known ones, if none)."""
    found = session.execute(select(ModelRow.id).where(ModelRow.name == name)).scalar()
    if found is None:
        raise ModelNotFoundError(
            f"no model {name!r} in the store at {where}; known: "
            f"{', '.join(model_names(session)) or 'none'}. Register it (register_model) "
            "or tune it (sattn-tune --model NAME)"
        )
    return int(found)


def write_model(session: Session, model: ModelInfo, now: datetime) -> int:
    """Upsert a model by name; returns its id."""
    values = {**model.model_dump(), "created_at": now, "updated_at": now}
    return StoreBase._upsert(session, ModelRow, values, ["name"])


class ModelMethods(StoreBase):
    """`ProfileStore`'s methods on models."""

    def register_model(self, info: ModelInfo | Mapping[str, Any] | None = None, **fields: Any) -> ModelInfo:
        """Insert or update a model (by name); returns the validated `ModelInfo`."""
        given = dict(info) if isinstance(info, Mapping) else info.model_dump() if info is not None else {}
        model = ModelInfo.model_validate({**given, **fields})
        with self._session(write=True) as session:
            write_model(session, model, utcnow())
        return model

    def get_model(self, name: str) -> ModelInfo:
        """The model of that name (`ModelNotFoundError` if none)."""
        with self._session() as session:
            return model_info(session.get_one(ModelRow, model_id(session, name, self._where)))

    def list_models(self) -> list[ModelInfo]:
        """All models, by name."""
        with self._session() as session:
            return [model_info(row) for row in session.execute(select(ModelRow).order_by(ModelRow.name)).scalars()]

    def delete_model(self, name: str) -> None:
        """Delete a model with all its runs, trials and profiles."""
        with self._session(write=True) as session:
            session.execute(delete(ModelRow).where(ModelRow.id == model_id(session, name, self._where)))
