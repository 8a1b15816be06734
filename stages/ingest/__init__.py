"""Step 0: load a data set (MovieLens, synthetic, your own events) into events, items, users and dlrm_samples."""
