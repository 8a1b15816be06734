"""Does the knowledge pay? The reference DLRM trained with vs without the LUM columns."""
