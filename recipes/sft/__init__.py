"""The SFT family: full fine-tuning, LoRA, and SLAM (more methods join here: OXA, GRAM)."""
