"""ELECTRA: BERT's encoder; the masked LM is the *generator* (``ElectraForMaskedLM``).

A discriminator checkpoint (``ElectraForPreTraining``) has no MLM head: loaded as a masked LM
its ``generator_*`` weights are missing, and the logit losses refuse it as they refuse any
encoder checkpoint. ELECTRA's embeddings may be narrower than the encoder (``embedding_size`` E
< ``hidden_size`` H, with an ``embeddings_project`` E -> H and a head H -> E): then the
embeddings and the head's E side stay whole under weight selection and only the H side is cut;
when E = H they are the residual stream and are cut with it (and the student keeps E = H).
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.model.families.base import Family, Rule, _selection_error, rules
from pipeline.model.families.roberta import BERT_ENCODER_RULES


def _factored(config: Any) -> bool:
    """Whether the embeddings have their own width (E != H, with a projection to H)."""
    return int(getattr(config, "embedding_size", config.hidden_size)) != int(config.hidden_size)


class Electra(Family):
    name = "electra"
    model_types = ("electra",)
    encoder_attr = "electra"
    head_prefixes = ("generator_predictions.", "generator_lm_head.")
    tied_head_keys = ("generator_lm_head.weight",)

    def head(self, model: Any, hidden: torch.Tensor) -> torch.Tensor:
        m: Any = model
        return m.generator_lm_head(m.generator_predictions(hidden))

    def adjust_student_config(
        self, raw: dict[str, Any], teacher: Any, layer_map: list[int]
    ) -> None:
        if not _factored(teacher):
            raw["embedding_size"] = raw["hidden_size"]

    def check_selection(self, config: Any, teacher: Any, student: Any, init: str) -> None:
        super().check_selection(config, teacher, student, init)
        if _factored(config) and student.hidden == int(config.embedding_size):
            raise _selection_error(
                f"electra: a student {student.hidden} wide, as wide as the teacher's embeddings, "
                "would have no embedding projection, which model.init "
                f"{init} selects from the teacher's: choose another model.student_hidden, or "
                "use model.init random"
            )

    def select_rules(self, teacher_config: Any) -> list[Rule]:
        if not _factored(teacher_config):
            return rules(
                [
                    (r"generator_predictions\.dense\.weight$", "R", "R"),
                    (r"generator_lm_head\.bias$", "", ""),
                    (r"generator_lm_head\.weight$", "", "R"),
                    *BERT_ENCODER_RULES,
                ]
            )
        return rules(
            [
                (r"embeddings\.(word|position|token_type)_embeddings\.weight$", "", ""),
                (r"embeddings\.LayerNorm\.(weight|bias)$", "", ""),
                (r"embeddings_project\.weight$", "R", ""),
                (r"embeddings_project\.bias$", "R", ""),
                (r"generator_predictions\.dense\.weight$", "", "R"),
                (r"generator_predictions\.(dense|LayerNorm)\.(weight|bias)$", "", ""),
                (r"generator_lm_head\.(weight|bias)$", "", ""),
                *BERT_ENCODER_RULES,
            ]
        )


FAMILY = Electra()
