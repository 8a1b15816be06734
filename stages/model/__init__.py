"""The models: the LUM (token encoder + causal Transformer), the reference DLRM, losses, the vocabulary, versions."""
