"""Daily table maintenance: expire, compact or cluster day D, vacuum, checkpoint (``lum run maintain``)."""
