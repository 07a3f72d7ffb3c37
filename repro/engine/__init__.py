"""The one engine every paper step stands on: array backend, MPI world, partitions, DistArray, kernels."""
