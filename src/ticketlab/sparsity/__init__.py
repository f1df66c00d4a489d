"""Which weights can be pruned, and how many of them are left."""

from ticketlab.sparsity.prunable import density, prunable_parameters

__all__ = ["density", "prunable_parameters"]
