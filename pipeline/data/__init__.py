"""The data a run trains on: the shards of a split (:mod:`.shards`), one corpus or a blend
(:mod:`.corpus`), the sample order (:mod:`.sampling`), masking as a pure function (:mod:`.masking`),
micro-batches built in loader workers (:mod:`.loader`) and on the device (:mod:`.batch`)."""
