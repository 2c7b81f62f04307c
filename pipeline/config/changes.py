"""What a resume may not change silently: the settings that shape training, old value and new.

A checkpoint keeps the resolved config it was saved under (``config.yaml`` in its folder). On
resume, :func:`setting_changes` compares it with this run's config over :data:`SHAPING`; the
checkpoint layer refuses a resume with changes unless ``train.allow_config_change`` is set (a
change of the run's length alone, :data:`LENGTH`, is allowed), and records each change. Settings that do not change what is learned (logging, checkpoint
cadence, paths, trackers, timeouts) are free to change between requeues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SHAPING = (
    "loss.",
    "masking.",
    "optim.",
    "train.max_steps",
    "train.epochs",
    "train.global_batch_size",
    "train.seed",
    "model.init",
    "model.student_type",
    "model.layer_map",
    "model.layer_map_rule",
    "model.teacher_dtype",
)
"""Dotted names (or section prefixes ending in ``.``) whose change alters the run's trajectory:
the learning rate and its schedule, the loss weights, the masking, the data order, the batch.
(The student's shape, the tokenizer and the data are checked by the checkpoint's identity and
cannot change at all.)"""


LENGTH = ("train.max_steps", "train.epochs")
"""A run's length: extending (or shortening) a run on requeue is what users do, so a change here
is recorded and printed, never refused (it still moves the learning-rate schedule's end)."""


@dataclass(frozen=True)
class Change:
    name: str
    before: Any
    after: Any

    @property
    def needs_consent(self) -> bool:
        """Refused unless ``train.allow_config_change``: every shaping change but the length."""
        return self.name not in LENGTH

    def __str__(self) -> str:
        return f"{self.name} {self.before!r} -> {self.after!r}"


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{section}.{name}": value
        for section, fields in config.items()
        if isinstance(fields, dict) and section != "resolved"
        for name, value in fields.items()
    }


def shaping(name: str) -> bool:
    return any(name == s or (s.endswith(".") and name.startswith(s)) for s in SHAPING)


def setting_changes(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """The shaping settings whose values differ between two configs (``Config.to_dict()`` form);
    a field one of them lacks (a release that added it) is not a change."""
    old, new = _flat(before), _flat(after)
    return [
        Change(name, old[name], new[name])
        for name in sorted(set(old) & set(new))
        if shaping(name) and old[name] != new[name]
    ]
