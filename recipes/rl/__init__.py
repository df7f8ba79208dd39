"""The RL family: GRPO with the long-CoT study's variants (positive/negative-only, relative length reward, offline
injection); MRO joins here."""
