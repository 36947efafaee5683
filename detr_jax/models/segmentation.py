"""The panoptic model: DETR plus the attention map and FPN-style mask head."""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.detr import DETR
from detr_jax.models.layers import TorchConv, nearest_resize

_xavier = nn.initializers.xavier_uniform()
# kaiming_uniform_(a=1): U(-sqrt(3/fan_in), sqrt(3/fan_in)); biases 0
_kaiming_a1 = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


class MHAttentionMap(nn.Module):
    """Per-query attention over the encoder memory, softmax jointly over
    heads x h x w (only the weights are returned, no values)."""
    hidden_dim: int
    num_heads: int
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, q, k, mask):
        dense = lambda name: nn.Dense(  # noqa: E731
            self.hidden_dim, kernel_init=_xavier, bias_init=nn.initializers.zeros,
            dtype=self.dtype, name=name)
        c = self.hidden_dim // self.num_heads
        q = dense('q_linear')(q)
        k = dense('k_linear')(k)
        qh = q.reshape(q.shape[:2] + (self.num_heads, c)) * float(c) ** -0.5
        kh = k.reshape(k.shape[:3] + (self.num_heads, c))
        weights = jnp.einsum('bqnc,bhwnc->bqnhw', qh, kh).astype(jnp.float32)
        weights = jnp.where(mask[:, None, None], weights, jnp.finfo(jnp.float32).min)
        shape = weights.shape
        weights = jax.nn.softmax(weights.reshape(shape[:2] + (-1,)), axis=-1)
        return weights.reshape(shape).astype(self.dtype)


class MaskHeadSmallConv(nn.Module):
    """Upsamples [projected features | attention maps] with the backbone's
    layer3/2/1 features (FPN), GroupNorm(8) after every conv: the
    original's for `context_dim` a multiple of 128 (every official model);
    a smaller head (the CPU demo's d=64) takes gcd(8, channels) groups
    where 8 do not divide its channels.

    Returns [B, Q, H1, W1] logits at layer1's resolution (stride 4).
    """
    context_dim: int
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, bbox_mask, fpns: Sequence[jnp.ndarray]):
        b, q = bbox_mask.shape[:2]
        nheads = bbox_mask.shape[2]
        dim = self.context_dim + nheads
        inter = [dim, self.context_dim // 2, self.context_dim // 4, self.context_dim // 8,
                 self.context_dim // 16]
        conv = lambda f, k, name: TorchConv(  # noqa: E731
            f, k, padding=k // 2, kernel_init=_kaiming_a1, bias_init=nn.initializers.zeros,
            dtype=self.dtype, name=name)
        gn = lambda name, ch: nn.GroupNorm(  # noqa: E731
            num_groups=math.gcd(8, ch), epsilon=1e-5, use_fast_variance=False,
            dtype=self.dtype, name=name)
        h, w = x.shape[1:3]
        x = jnp.broadcast_to(x[:, None], (b, q) + x.shape[1:])
        x = jnp.concatenate([x, jnp.moveaxis(bbox_mask, 2, -1).astype(x.dtype)], axis=-1)
        x = x.reshape((b * q, h, w, dim))
        x = nn.relu(gn('gn1', dim)(conv(dim, 3, 'lay1')(x)))
        x = nn.relu(gn('gn2', inter[1])(conv(inter[1], 3, 'lay2')(x)))
        for i, fpn in enumerate(fpns):
            cur = conv(inter[i + 1], 1, f'adapter{i + 1}')(fpn)
            fh, fw = cur.shape[1:3]
            up = nearest_resize(x, (fh, fw)).reshape((b, q, fh, fw, -1))
            x = (cur[:, None] + up).reshape((b * q, fh, fw, -1))
            x = nn.relu(gn(f'gn{i + 3}', inter[i + 2])(conv(inter[i + 2], 3, f'lay{i + 3}')(x)))
        x = conv(1, 3, 'out_lay')(x)
        return x.reshape((b, q) + x.shape[1:3])


class DETRPanoptic(nn.Module):
    """DETR (nested under `detr`, as the original's DETRsegm) + mask head.

    Adds `pred_masks` [B, Q, ceil(H/4), ceil(W/4)] (float32 logits) to DETR's
    outputs. With `freeze_detr` (the original's second stage,
    `--frozen_weights`) no gradient flows into the detector: the mask head
    learns on its fixed features (the optimizer leaves the detector's
    parameters as they are: `optim.param_labels`).
    """
    detr: DETR
    freeze_detr: bool = False

    @nn.compact
    def __call__(self, images, pixel_mask, train=False):
        hs, memory, src_proj, mask, feats, ref = self.detr.encode_with_reference(
            images, pixel_mask, train)
        if self.freeze_detr:
            hs, memory, src_proj, feats, ref = jax.lax.stop_gradient(
                (hs, memory, src_proj, feats, ref))
        out = self.detr.heads(hs, ref)
        d = self.detr
        bbox_mask = MHAttentionMap(d.hidden_dim, d.nheads, d.dtype, name='bbox_attention')(
            hs[-1], memory, mask)
        masks = MaskHeadSmallConv(d.hidden_dim, d.dtype, name='mask_head')(
            src_proj, bbox_mask, [feats[2], feats[1], feats[0]])
        out['pred_masks'] = masks.astype(jnp.float32)
        return out
