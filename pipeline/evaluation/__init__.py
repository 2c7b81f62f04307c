"""How good a model is: held-out masked-LM measures against the teacher (:mod:`.mlm`) and a
fine-tuned downstream classifier (:mod:`.classify`)."""
