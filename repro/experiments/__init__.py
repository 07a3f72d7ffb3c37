"""The paper's steps, one module each: train, evaluate, visualize, invariance, control, scaling."""
