"""Recipe families (sft, rl, probing, translation, retrieval, t2i). Imported lazily through runner.registry."""
