"""A training batch split over devices: what the model's batch-wide
operations do so that their values do not depend on the split.

With 'one_array' gradients (`trainer.gradient_all_reduce`) the train step's
forward pass runs the model under `jax.shard_map` over the mesh axis 'data'
(`sharding.BATCH_AXIS`): each device sees only its own `n` rows, device d
the global examples d*n .. d*n+n-1. Everywhere else (the default train
step, evaluation, inference, a plain `model.apply`) the model sees the whole
batch. What depends on the batch as a whole:

- random draws (dropout, denoising noise): drawn for the whole batch and
  cut to this device's rows (`batch_rows`), so each example gets the mask
  it gets unsplit (bitwise: the same key, shape and bits);
- trainable batch norm's statistics: summed over the devices
  (`batch_total`).

Whether the batch is split is known when the code is traced: `jax.lax`
raises NameError for an axis name that no enclosing `shard_map` binds.
"""
import jax

from detr_jax.sharding import BATCH_AXIS


def batch_rows(draw, n):
    """This device's `n` rows of `draw(rows)`, a random array drawn for
    `rows` examples (its leading axis); unsplit, `draw(n)` itself."""
    try:
        d, devices = jax.lax.axis_index(BATCH_AXIS), jax.lax.axis_size(BATCH_AXIS)
    except NameError:  # not split: the whole batch is here
        return draw(n)
    return jax.lax.dynamic_slice_in_dim(draw(n * devices), d * n, n)


def batch_total(x):
    """`x` summed over the devices the batch is split over (itself when it
    is not split)."""
    try:
        return jax.lax.psum(x, BATCH_AXIS)
    except NameError:  # not split: x is already the whole batch's
        return x
