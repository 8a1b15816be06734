"""Step 3: the point-in-time join of day D samples with the newest knowledge before D -> dlrm_training."""
