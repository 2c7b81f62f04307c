"""Loading models: teachers without an MLM head refused, the teacher's dtype, the data fit check."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from pipeline_helpers import make_bert_teacher

from data_prep.errors import UserError
from pipeline.model.masked_lm import check_model_fits, load_teacher, teacher_dtype


def test_teacher_without_mlm_head_is_refused(tmp_path: Path, wordpiece_tokenizer: Path) -> None:
    encoder = make_bert_teacher(tmp_path / "encoder", wordpiece_tokenizer, with_head=False)
    with pytest.raises(UserError, match="masked-LM head weights are missing"):
        load_teacher(str(encoder), "sdpa", need_head=True)
    # fine for the losses on hidden states and attention; evaluation then skips the teacher
    assert not load_teacher(str(encoder), "sdpa", need_head=False).has_head


def test_teacher_dtype_is_fp16_on_gpus_and_fp32_on_cpus() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert teacher_dtype("auto", cpu) == torch.float32
    assert teacher_dtype("auto", gpu) == torch.float16
    assert teacher_dtype("bf16", cpu) == torch.bfloat16
    assert teacher_dtype("fp16", gpu) == torch.float16
    with pytest.raises(UserError, match="fp16 does not run on a CPU"):
        teacher_dtype("fp16", cpu)


def test_model_must_hold_the_datas_vocabulary_and_length() -> None:
    manifest: Any = SimpleNamespace(vocab_size=100, seq_len=128)
    check_model_fits(SimpleNamespace(vocab_size=100, max_position_embeddings=128), manifest, "m")
    with pytest.raises(UserError, match="vocabulary of 90 is smaller than the data's 100"):
        check_model_fits(SimpleNamespace(vocab_size=90, max_position_embeddings=512), manifest, "m")
    with pytest.raises(UserError, match="--seq-len 64"):
        check_model_fits(SimpleNamespace(vocab_size=100, max_position_embeddings=64), manifest, "m")
