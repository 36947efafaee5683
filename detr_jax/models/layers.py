"""Layers shared by the models: PyTorch-default initializers, convolutions
with PyTorch's padding (1x1 ones as matmuls), frozen BatchNorm, and
PyTorch's legacy nearest resize.

DETR's convergence depends on its initialization, and Flax's defaults
(lecun-normal kernels, zero biases) differ from PyTorch's, so every layer that
the original leaves at PyTorch's default is built here with that default.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.models.device_rows import batch_rows, batch_total


class Dropout(nn.Module):
    """`nn.Dropout` (zeros with probability `rate`, the rest scaled by
    1 / (1 - rate); the same key, bits and values) whose mask, when the
    batch (axis 0) is split over devices, is this device's rows of the
    whole batch's (`device_rows.batch_rows`). Draws from the 'dropout'
    rng."""
    rate: float

    @nn.compact
    def __call__(self, x, deterministic):
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        key = self.make_rng('dropout')
        mask = batch_rows(lambda rows: jax.random.bernoulli(key, keep, (rows,) + x.shape[1:]),
                          x.shape[0])
        return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


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
    """A Conv with PyTorch's explicit symmetric padding and default init.

    Parameters as `nn.Conv` named 'conv' (`conv/kernel` [k, k, in, out],
    `conv/bias` [out]), whatever computes it: a 1x1 convolution is the
    matmul over channels that it is (`_PointwiseConv`)."""
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
        init = dict(kernel_init=self.kernel_init or torch_default_kernel(),
                    bias_init=self.bias_init or torch_default_bias(fan_in))
        if self.kernel_size == 1 and p == 0 and self.dilation == 1:
            return _PointwiseConv(self.features, stride=self.stride, use_bias=self.use_bias,
                                  dtype=self.dtype, name='conv', **init)(x)
        return nn.Conv(
            self.features, (self.kernel_size,) * 2, strides=(self.stride,) * 2,
            padding=((p, p), (p, p)), kernel_dilation=(self.dilation,) * 2,
            use_bias=self.use_bias, dtype=self.dtype, name='conv', **init)(x)


class _PointwiseConv(nn.Module):
    """`nn.Conv` with a 1x1 kernel (the same parameters, initial values and
    dtype promotion) computed as a matmul over channels, on every
    `stride`-th pixel from the first (the pixels a strided 1x1 convolution
    reads).

    Why (the TPU compiler's `bytes accessed`; benchmarks/README.md, "Where
    the bytes go"): XLA:TPU relayouts a convolution's operands into its
    on-chip layout, where a dot reads them as they are, with the frozen
    batch norm and the ReLU fused in. R50's train step on v5e counts 17%
    fewer bytes (its bottleneck blocks 44% fewer); on the CPU the outputs
    are nn.Conv's bit for bit."""
    features: int
    stride: int
    use_bias: bool
    kernel_init: object
    bias_init: object
    dtype: object

    @nn.compact
    def __call__(self, x):
        kernel = self.param('kernel', self.kernel_init, (1, 1, x.shape[-1], self.features),
                            jnp.float32)
        bias = (self.param('bias', self.bias_init, (self.features,), jnp.float32)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.stride > 1:
            x = x[:, ::self.stride, ::self.stride]
        y = jnp.einsum('bhwc,cd->bhwd', x, kernel[0, 0])
        return y if bias is None else y + bias


class FrozenBatchNorm(nn.Module):
    """BatchNorm with fixed statistics and affine (the original's eps 1e-5).

    All four vectors live in the `batch_stats` collection, outside `params`,
    so no optimizer ever sees them.
    """
    eps: float = 1e-5
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, train=False, pixel_mask=None):
        del train, pixel_mask  # a per-pixel affine map: the original's numerics
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
    """The backbone's normalization: 'frozen_bn' (the original's), 'bn'
    (trainable) or 'gn'. Called as `norm(x, train, pixel_mask)`.

    'bn' and 'gn' compute their statistics over real pixels only and zero
    their outputs on padding (`pixel_mask` [B, H, W] at the input image's
    size, True on real pixels; None: every pixel is real), so outputs on
    real pixels do not depend on how much padding a shape bucket adds.
    'frozen_bn' is a per-pixel affine map, exactly the original's (which
    does not zero padding either)."""
    scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
    if kind == 'frozen_bn':
        return FrozenBatchNorm(dtype=dtype, name=name)
    if kind == 'bn':
        return _MaskedBatchNorm(dtype=dtype, name=name, scale_init=scale_init)
    if kind == 'gn':
        return _MaskedGroupNorm(dtype=dtype, name=name, scale_init=scale_init)
    raise ValueError(f"model.norm must be 'frozen_bn', 'bn' or 'gn', got {kind!r}")


def _real_pixels(x, pixel_mask):
    """float32 [B, h, w, 1]: 1 on the real pixels of feature map `x` (the
    image mask brought to its size with the legacy nearest rule)."""
    if pixel_mask is None:
        return jnp.ones(x.shape[:3] + (1,), jnp.float32)
    return nearest_resize(pixel_mask, x.shape[1:3]).astype(jnp.float32)[..., None]


def zero_padding(x, pixel_mask):
    """`x` [B, h, w, C] with its padded positions zeroed (see `_real_pixels`)."""
    return (x * _real_pixels(x, pixel_mask)).astype(x.dtype)


class _MaskedBatchNorm(nn.Module):
    """BatchNorm (momentum 0.9, eps 1e-5) whose batch statistics count real
    pixels only; running `mean`/`var` and the affine `scale`/`bias` under
    `bn` (the variable paths of Flax's BatchNorm named 'bn')."""
    dtype: object = jnp.float32
    scale_init: object = nn.initializers.ones

    @nn.compact
    def __call__(self, x, train=False, pixel_mask=None):
        m = _real_pixels(x, pixel_mask)
        y = _MaskedBatchNormCore(self.scale_init, name='bn')(x.astype(jnp.float32), m, train)
        return (y * m).astype(self.dtype)


class _MaskedBatchNormCore(nn.Module):
    scale_init: object
    momentum: float = 0.9
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x, m, train):
        c = x.shape[-1]
        scale = self.param('scale', self.scale_init, (c,), jnp.float32)
        bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
        if train:
            # the whole batch's statistics, also when its rows are split over
            # devices (`device_rows`)
            n = jnp.maximum(batch_total(m.sum()), 1.0)
            mean = batch_total((x * m).sum((0, 1, 2))) / n
            var = batch_total((((x - mean) * m) ** 2).sum((0, 1, 2))) / n
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class _MaskedGroupNorm(nn.Module):
    """GroupNorm (gcd(32, C) groups, eps 1e-5) whose statistics count real
    pixels only; the affine `scale`/`bias` under `gn` (the parameter paths
    of Flax's GroupNorm named 'gn')."""
    dtype: object = jnp.float32
    scale_init: object = nn.initializers.ones

    @nn.compact
    def __call__(self, x, train=False, pixel_mask=None):
        del train
        m = _real_pixels(x, pixel_mask)
        y = _MaskedGroupNormCore(self.scale_init, name='gn')(x.astype(jnp.float32), m)
        return (y * m).astype(self.dtype)


class _MaskedGroupNormCore(nn.Module):
    scale_init: object
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x, m):
        b, h, w, c = x.shape
        g = int(np.gcd(32, c))
        scale = self.param('scale', self.scale_init, (c,), jnp.float32)
        bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
        xg = x.reshape(b, h, w, g, c // g)
        mg = m[..., None]  # [B, h, w, 1, 1]
        n = jnp.maximum(mg.sum((1, 2, 4), keepdims=True) * (c // g), 1.0)
        mean = (xg * mg).sum((1, 2, 4), keepdims=True) / n
        var = (((xg - mean) * mg) ** 2).sum((1, 2, 4), keepdims=True) / n
        y = ((xg - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, h, w, c)
        return y * scale + bias


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
