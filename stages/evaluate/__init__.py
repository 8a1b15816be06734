"""Does the knowledge pay? Consumers (reference DLRM, logistic regression) with vs without the LUM columns."""
