"""Per user, the last max_len behaviours up to the end of day D (the pretraining and inference input)."""
