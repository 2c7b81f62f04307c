"""Knowledge-distillation pretraining of BERT students on DeepSpeed ZeRO-2.

The commands (thin: parse, then call the library) sit at the top: ``train``, ``export``,
``evaluate`` and the ``cache_teacher`` stage (``python -m pipeline.<name>``). The library below
them, by stage; each subpackage imports only from the ones listed before it (and ``data_prep``),
which ``tests/test_layering.py`` checks:

=================  ==========================================================================
``config/``        the typed run configuration, its command line and recipes, ``--data`` entries
``distributed/``   launchers and ranks, the process group, every collective we issue
``data/``          shards, blends and sample order, masking, micro-batches, the data loader
``model/``         masked LMs, the student derived from a teacher, teacher targets, the losses
``checkpoint/``    ZeRO checkpoints with a commit marker, and when and how a run saves/resumes
``publish/``       a run's model files, its trained model, the exported Hugging Face folder
``evaluation/``    held-out MLM measures, downstream fine-tuning
``cache_teacher/`` the teacher logits cache: its format, the job that writes it, its reader
``run/``           one training run: the plan, the DeepSpeed settings, the loop and its guards
``tools/``         on top of everything: the demo, the benchmarks, the structure report
=================  ==========================================================================
"""
