"""Knowledge-distillation pretraining of BERT students on DeepSpeed ZeRO-2."""
