"""Training machinery shared by pretrain: sequence packing, the loop, local DDP workers, retrieval evaluation."""
