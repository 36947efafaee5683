"""DETR, the DEtection TRansformer, in JAX/Flax."""

__version__ = "0.1.0"
