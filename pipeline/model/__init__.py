"""The models of a distillation run: masked LMs of every supported family seen through one
adapter (:mod:`.masked_lm`), the student derived from a teacher (:mod:`.student`), which layers
and neurons pair up (:mod:`.alignment`), what the losses need from the teacher
(:mod:`.targets`), the losses (:mod:`.losses`) and their weighted sum around the student, the
module inside the engine (:mod:`.objective`)."""
