"""From a run to a model others can use: the model files a run keeps (:mod:`.run_files`), its
trained model as a Hugging Face masked LM (:mod:`.run_model`), the exported folder
(:mod:`.folder`) and its model card (:mod:`.model_card`)."""
