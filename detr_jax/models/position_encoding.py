"""Positional encodings of the backbone's feature map.

Both take the feature-level `mask` [B, h, w] (True on real pixels) and return
positions [B, h, w, hidden_dim], channels-last.
"""
import math

import flax.linen as nn
import jax.numpy as jnp


class PositionEmbeddingSine(nn.Module):
    """The original's sine encoding, normalized to [0, 2*pi] by the real extent.

    Each axis is the cumulative count of real pixels, divided by the last value
    (+1e-6) and multiplied by 2*pi; channels are sin/cos interleaved per
    frequency, y first, then x.
    """
    num_pos_feats: int = 128
    temperature: float = 10000.0
    normalize: bool = True
    scale: float = 2 * math.pi

    @nn.compact
    def __call__(self, mask):
        not_mask = mask.astype(jnp.float32)
        y_embed = jnp.cumsum(not_mask, axis=1)
        x_embed = jnp.cumsum(not_mask, axis=2)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = jnp.arange(self.num_pos_feats, dtype=jnp.float32)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t

        def interleave(p):
            s = jnp.stack([jnp.sin(p[..., 0::2]), jnp.cos(p[..., 1::2])], axis=-1)
            return s.reshape(p.shape)

        return jnp.concatenate([interleave(pos_y), interleave(pos_x)], axis=-1)


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute rows/columns (50 each, as the original): x then y."""
    num_pos_feats: int = 128
    max_size: int = 50

    @nn.compact
    def __call__(self, mask):
        b, h, w = mask.shape
        if h > self.max_size or w > self.max_size:
            raise ValueError(
                f'learned position embedding covers at most {self.max_size}x'
                f'{self.max_size} feature cells, got a {h}x{w} feature map; '
                'use position_embedding="sine" or smaller images')
        init = nn.initializers.uniform(1.0)
        row = self.param('row_embed', init, (self.max_size, self.num_pos_feats))
        col = self.param('col_embed', init, (self.max_size, self.num_pos_feats))
        x_emb = jnp.broadcast_to(col[None, :w], (h, w, self.num_pos_feats))
        y_emb = jnp.broadcast_to(row[:h, None], (h, w, self.num_pos_feats))
        pos = jnp.concatenate([x_emb, y_emb], axis=-1)
        return jnp.broadcast_to(pos[None], (b, h, w, 2 * self.num_pos_feats))
