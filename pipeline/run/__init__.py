"""One training run: every input checked before the process group (:mod:`.plan`), the DeepSpeed
JSON completed from the config (:mod:`.ds_config`), the optimizer and schedule (:mod:`.optim`),
the loop (:mod:`.trainer`), the reasons it stops early (:mod:`.guards`) and what it records
(:mod:`.metrics`)."""
