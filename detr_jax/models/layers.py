"""Layers shared by the models: PyTorch-default initializers, frozen
BatchNorm, and PyTorch's legacy nearest resize.

DETR's convergence depends on its initialization, and Flax's defaults
(lecun-normal kernels, zero biases) differ from PyTorch's, so every layer that
the original leaves at PyTorch's default is built here with that default.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def torch_default_kernel():
    """`nn.Linear`/`nn.Conv2d` weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_default_bias(fan_in):
    """`nn.Linear`/`nn.Conv2d` biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class TorchDense(nn.Module):
    """A Dense layer initialized like `torch.nn.Linear` unless told otherwise."""
    features: int
    kernel_init: object = None
    bias_init: object = None
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        return nn.Dense(
            self.features,
            kernel_init=self.kernel_init or torch_default_kernel(),
            bias_init=self.bias_init or torch_default_bias(fan_in),
            dtype=self.dtype, name='dense')(x)


class TorchConv(nn.Module):
    """A Conv with PyTorch's explicit symmetric padding and default init."""
    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    use_bias: bool = True
    kernel_init: object = None
    bias_init: object = None
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1] * self.kernel_size ** 2
        p = self.padding
        return nn.Conv(
            self.features, (self.kernel_size,) * 2, strides=(self.stride,) * 2,
            padding=((p, p), (p, p)), kernel_dilation=(self.dilation,) * 2,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init or torch_default_kernel(),
            bias_init=self.bias_init or torch_default_bias(fan_in),
            dtype=self.dtype, name='conv')(x)


class FrozenBatchNorm(nn.Module):
    """BatchNorm with fixed statistics and affine (the original's eps 1e-5).

    All four vectors live in the `batch_stats` collection, outside `params`,
    so no optimizer ever sees them.
    """
    eps: float = 1e-5
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        del train
        c = x.shape[-1]
        ones = lambda: jnp.ones((c,), jnp.float32)  # noqa: E731
        zeros = lambda: jnp.zeros((c,), jnp.float32)  # noqa: E731
        w = self.variable('batch_stats', 'weight', ones).value
        b = self.variable('batch_stats', 'bias', zeros).value
        rm = self.variable('batch_stats', 'running_mean', zeros).value
        rv = self.variable('batch_stats', 'running_var', ones).value
        scale = w * jax.lax.rsqrt(rv + self.eps)
        bias = b - rm * scale
        return (x * scale.astype(self.dtype) + bias.astype(self.dtype)).astype(self.dtype)


def make_norm(kind, dtype=jnp.float32, name=None, zero_init=False):
    """The backbone's normalization: 'frozen_bn', 'bn' (trainable) or 'gn'."""
    scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
    if kind == 'frozen_bn':
        return FrozenBatchNorm(dtype=dtype, name=name)
    if kind == 'bn':
        return _TrainableBN(dtype=dtype, name=name, scale_init=scale_init)
    if kind == 'gn':
        return _GroupNorm(dtype=dtype, name=name, scale_init=scale_init)
    raise ValueError(f"model.norm must be 'frozen_bn', 'bn' or 'gn', got {kind!r}")


class _TrainableBN(nn.Module):
    dtype: object = jnp.float32
    scale_init: object = nn.initializers.ones

    @nn.compact
    def __call__(self, x, train=False):
        return nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5,
            scale_init=self.scale_init, dtype=self.dtype, name='bn')(x)


class _GroupNorm(nn.Module):
    dtype: object = jnp.float32
    scale_init: object = nn.initializers.ones

    @nn.compact
    def __call__(self, x, train=False):
        del train
        groups = int(np.gcd(32, x.shape[-1]))
        return nn.GroupNorm(
            num_groups=groups, epsilon=1e-5, use_fast_variance=False,
            scale_init=self.scale_init, dtype=self.dtype, name='gn')(x)


def legacy_nearest_indices(in_size, out_size):
    """Source indices of PyTorch's legacy 'nearest' mode: floor(i * in/out)."""
    if in_size == out_size:
        return np.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def nearest_resize(x, out_hw, axes=(1, 2)):
    """Resizes `x` along two spatial axes with PyTorch's legacy nearest rule.

    `jax.image.resize(method='nearest')` samples pixel centres and so picks
    different source pixels; DETR downsamples its padding mask and upsamples
    its mask-head features with this rule.
    """
    for axis, size in zip(axes, out_hw):
        x = jnp.take(x, legacy_nearest_indices(x.shape[axis], size), axis=axis)
    return x


def _pool_windows(x, k, s, p):
    """The k*k strided views of `x` (NHWC) padded with -inf, in the window's
    row-major order."""
    n, h, w, c = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-jnp.inf)
    views = [jax.lax.slice(xp, (0, dy, dx, 0), (n, dy + s * (oh - 1) + 1, dx + s * (ow - 1) + 1, c),
                           (1, s, s, 1)) for dy in range(k) for dx in range(k)]
    return views


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, k=3, s=2, p=1):
    """`torch.nn.MaxPool2d(k, s, p)` on NHWC, with the gradient going to the
    first maximum of each window as PyTorch's does.

    The same values as `flax.linen.max_pool`; XLA's CPU gradient of that
    (select-and-scatter through a packed reduce-window and a scatter) took
    ~15% of a step of the demo's backbone, this one is a few fused
    elementwise passes.
    """
    return functools.reduce(jnp.maximum, _pool_windows(x, k, s, p))


def _max_pool_fwd(x, k, s, p):
    views = _pool_windows(x, k, s, p)
    out = functools.reduce(jnp.maximum, views)
    # index of the first window position holding the maximum
    first = jnp.full(out.shape, k * k - 1, jnp.int8)
    for i in reversed(range(k * k - 1)):
        first = jnp.where(views[i] == out, jnp.int8(i), first)
    return out, (first, x.shape)


def _max_pool_bwd(k, s, p, res, g):
    first, shape = res
    n, h, w, c = shape
    oh, ow = g.shape[1], g.shape[2]
    total = jnp.zeros((n, h + 2 * p, w + 2 * p, c), g.dtype)
    zero = jnp.zeros((), g.dtype)
    for i in range(k * k):
        dy, dx = divmod(i, k)
        gi = jnp.where(first == i, g, zero)
        # place gi at rows dy, dy+s, ... and columns dx, dx+s, ... of the padded input
        cfg = ((0, 0, 0), (dy, h + 2 * p - dy - s * (oh - 1) - 1, s - 1),
               (dx, w + 2 * p - dx - s * (ow - 1) - 1, s - 1), (0, 0, 0))
        total = total + jax.lax.pad(gi, zero, cfg)
    return (total[:, p:p + h, p:p + w, :],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
