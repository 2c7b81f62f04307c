"""Tiny random masked LMs of every family distil distils, built from transformers' own classes
over a real tokenizer and saved as a teacher folder (config, weights, tokenizer).

``FAMILY_CONFIGS`` holds each family's shape: 4 layers, 32 wide, 4 heads of 8, FFN 64, with
what makes the family itself: ModernBERT's alternating global/local attention (global every
2nd layer, a local window of 8 tokens), DeBERTa-v3's relative positions (no absolute ones, no
token types), ELECTRA's factored embeddings (E = 16 < H = 32), EuroBERT's grouped-query
attention (2 K/V heads for 4 query heads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SIZES = {
    "num_hidden_layers": 4,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}
FAMILY_CONFIGS: dict[str, dict[str, Any]] = {
    "bert": {},
    "roberta": {},
    "modernbert": {"global_attn_every_n_layers": 2, "local_attention": 16},
    "deberta-v2": {
        "relative_attention": True,
        "position_buckets": 32,
        "pos_att_type": ["p2c", "c2p"],
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "position_biased_input": False,
        "type_vocab_size": 0,
        "max_relative_positions": -1,
    },
    "electra": {"embedding_size": 16},
    "eurobert": {"num_key_value_heads": 2},
}
NEW_FAMILIES = ("modernbert", "deberta-v2", "electra", "eurobert")


def make_family_teacher(
    out: Path, tokenizer_dir: Path, model_type: str, seed: int = 0, **overrides: Any
) -> Path:
    """A randomly initialised ``*ForMaskedLM`` of ``model_type`` over the tokenizer of
    ``tokenizer_dir``, saved with it; every weight random (biases and norms too, so a test that
    compares outputs sees a weight that was not carried)."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    special = {
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.cls_token_id,
        "eos_token_id": tok.sep_token_id,
        "cls_token_id": tok.cls_token_id,
        "sep_token_id": tok.sep_token_id,
        "mask_token_id": tok.mask_token_id,
    }
    kwargs = {
        **SIZES,
        "vocab_size": len(tok),
        "max_position_embeddings": 128,
        **special,
        **FAMILY_CONFIGS[model_type],
        **overrides,
    }
    cfg = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    attn = "eager" if model_type == "deberta-v2" else "sdpa"
    model = AutoModelForMaskedLM.from_config(cfg, attn_implementation=attn)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.05)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
