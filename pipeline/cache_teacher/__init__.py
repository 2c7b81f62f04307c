"""The teacher logits cache: the teacher runs once over the data, the trainer reads its targets.

``python -m pipeline.cache_teacher`` (:mod:`.__main__`) writes CACHE_DIR; ``pipeline.train
--teacher-cache CACHE_DIR`` reads it. One subpackage holds all of it:

* :mod:`.format`: the files, dtypes, fingerprints and identity (the one definition);
* :mod:`.job`: the job's settings, resolved from the command line and checked;
* :mod:`.writer`: the teacher over one shard at a time, every view, then the manifest;
* :mod:`.reader`: the trainer's side, checked against the run and read in the loader workers.
"""
