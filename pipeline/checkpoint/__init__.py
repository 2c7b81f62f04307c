"""Checkpoints: the ZeRO checkpoint with per-rank state and a commit marker on disk
(:mod:`.store`), and the trainer's handle on when and how to save and resume (:mod:`.manager`)."""
