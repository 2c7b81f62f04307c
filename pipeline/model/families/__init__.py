"""The model families distil distils, one module each, found by a config's ``model_type``.

Adding a family: a module here with a :class:`~pipeline.model.families.base.Family` subclass
and ``FAMILY = ...``, its name in :data:`_MODULES`, its model types in
``data_prep/families.py`` (data_prep never imports pipeline), and a test file.
"""

from __future__ import annotations

from importlib import import_module

from data_prep.errors import UserError
from data_prep.families import SUPPORTED_MODEL_TYPES
from pipeline.model.families.base import Family

_MODULES = ("bert", "distilbert", "roberta", "modernbert", "deberta", "electra", "eurobert")

FAMILIES: dict[str, Family] = {}
"""model_type -> its family."""
for _name in _MODULES:
    _family: Family = import_module(f"pipeline.model.families.{_name}").FAMILY
    FAMILIES.update({kind: _family for kind in _family.model_types})
# data_prep refuses other families before tokenizing: the same list, checked on import.
assert tuple(sorted(FAMILIES)) == tuple(sorted(SUPPORTED_MODEL_TYPES)), (
    "add the family's model types to data_prep/families.py too"
)


def family_of(model_type: str) -> Family:
    """The family of a ``model_type``; refused in one line when distil has none."""
    family = FAMILIES.get(model_type)
    if family is None:
        raise UserError(
            f"model type '{model_type}' is not supported (supported: {', '.join(FAMILIES)})"
        )
    return family


def attn_implementation(model_type: str, requested: str) -> str:
    """The attention kernel to ask transformers for: the requested one, or the family's own
    when it has no SDPA path (DeBERTa); never eager where SDPA exists unless asked for."""
    family = FAMILIES.get(model_type)
    if family is not None and not family.sdpa and requested == "sdpa":
        return "eager"
    return requested
