"""Step 1: pretrain the LUM on user_sequences of day D and publish the model version lum-D."""
