"""repro: the "cat neuron" experiment (Le et al. 2012) on COTS HPC (Coates et al. 2013)."""

__version__ = "0.1.0"
