"""DETR, the DEtection TRansformer, in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name):  # `from detr_jax import Predictor` without importing it eagerly
    if name == 'Predictor':
        from detr_jax.inference import Predictor
        return Predictor
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
