"""Offline data preparation: corpora -> packed Megatron-LM indexed shards + manifest."""
