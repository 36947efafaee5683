"""The original DETR transformer: post-norm (default) or pre-norm encoder and
decoder, positions added to queries and keys only, every decoder layer's
output passed through the shared final LayerNorm.

Sequences are batch-first: `src` [B, S, D] is the flattened feature map,
`key_valid` [B, S] is True on real (unpadded) cells.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.layers import Dropout, torch_default_bias

_xavier = nn.initializers.xavier_uniform()


def _layer_norm(name, dtype):
    return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=dtype, name=name)


def _attend(q, k, v, key_valid, scale, dropout, train, dtype):
    """q [B, Q, h, c], k [B, S, h, c], v [B, S, h, e] -> ([B, Q, h * e],
    the attention weights [B, h, Q, S] before dropout; exactly 0 on keys
    that are not `key_valid`: [B, S] for every query, or [B, Q, S] per
    query)."""
    logits = jnp.einsum('bqhc,bkhc->bhqk', q * scale, k)
    if key_valid is not None:
        allowed = (key_valid[:, None, None, :] if key_valid.ndim == 2
                   else key_valid[:, None, :, :])
        # finfo.min rather than -inf: an all-padding example (the filler of a
        # last partial batch) then gives uniform weights, not NaN.
        logits = jnp.where(allowed, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
    dropped = Dropout(dropout)(weights, deterministic=not train)
    out = jnp.einsum('bhqk,bkhc->bqhc', dropped, v)
    return out.reshape(out.shape[:2] + (-1,)), weights


class MultiheadAttention(nn.Module):
    """`torch.nn.MultiheadAttention` as one fusable XLA computation.

    The q|k|v projection is one [D, 3D] matrix (xavier-initialized as a whole,
    as the original's `_reset_parameters` does with `in_proj_weight`); heads
    are a tensor axis, not a loop. The weights [B, h, Q, S] are sown as
    `intermediates/.../attention_weights` (kept only when `apply` is asked
    for that collection: `inference.attention_maps`).
    """
    d_model: int
    nhead: int
    dropout: float = 0.0
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, query, key, value, key_valid=None, train=False):
        d, h = self.d_model, self.nhead
        hd = d // h
        w = self.param('in_proj_kernel', _xavier, (d, 3 * d)).astype(self.dtype)
        b = self.param('in_proj_bias', nn.initializers.zeros, (3 * d,)).astype(self.dtype)
        q = query.astype(self.dtype) @ w[:, :d] + b[:d]
        k = key.astype(self.dtype) @ w[:, d:2 * d] + b[d:2 * d]
        v = value.astype(self.dtype) @ w[:, 2 * d:] + b[2 * d:]
        split = lambda x: x.reshape(x.shape[:2] + (h, hd))  # noqa: E731
        out, weights = _attend(split(q), split(k), split(v), key_valid, hd ** -0.5,
                               self.dropout, train, self.dtype)
        self.sow('intermediates', 'attention_weights', weights)
        return nn.Dense(d, kernel_init=_xavier, bias_init=nn.initializers.zeros,
                        dtype=self.dtype, name='out_proj')(out)


class _FFN(nn.Module):
    d_model: int
    dim_feedforward: int
    dropout: float
    dtype: object

    @nn.compact
    def __call__(self, x, train):
        x = nn.Dense(self.dim_feedforward, kernel_init=_xavier,
                     bias_init=torch_default_bias(self.d_model), dtype=self.dtype,
                     name='linear1')(x)
        x = Dropout(self.dropout)(nn.relu(x), deterministic=not train)
        return nn.Dense(self.d_model, kernel_init=_xavier,
                        bias_init=torch_default_bias(self.dim_feedforward),
                        dtype=self.dtype, name='linear2')(x)


class EncoderLayer(nn.Module):
    d_model: int
    nhead: int
    dim_feedforward: int
    dropout: float
    pre_norm: bool
    dtype: object

    @nn.compact
    def __call__(self, src, pos, key_valid, train=False):
        attn = MultiheadAttention(self.d_model, self.nhead, self.dropout, self.dtype,
                                  name='self_attn')
        ffn = _FFN(self.d_model, self.dim_feedforward, self.dropout, self.dtype, name='ffn')
        norm1, norm2 = _layer_norm('norm1', self.dtype), _layer_norm('norm2', self.dtype)
        drop = lambda x: Dropout(self.dropout)(x, deterministic=not train)  # noqa: E731
        if self.pre_norm:
            x = norm1(src)
            src = src + drop(attn(x + pos, x + pos, x, key_valid, train))
            return src + drop(ffn(norm2(src), train))
        src = norm1(src + drop(attn(src + pos, src + pos, src, key_valid, train)))
        return norm2(src + drop(ffn(src, train)))


class DecoderLayer(nn.Module):
    d_model: int
    nhead: int
    dim_feedforward: int
    dropout: float
    pre_norm: bool
    dtype: object

    @nn.compact
    def __call__(self, tgt, memory, pos, query_pos, key_valid, train=False, self_mask=None):
        """`self_mask` [B, Q, Q] (True: query i may attend to query j) or
        None (all queries see each other)."""
        mk = lambda name: MultiheadAttention(  # noqa: E731
            self.d_model, self.nhead, self.dropout, self.dtype, name=name)
        self_attn, cross_attn = mk('self_attn'), mk('multihead_attn')
        ffn = _FFN(self.d_model, self.dim_feedforward, self.dropout, self.dtype, name='ffn')
        norms = [_layer_norm(f'norm{i}', self.dtype) for i in (1, 2, 3)]
        drop = lambda x: Dropout(self.dropout)(x, deterministic=not train)  # noqa: E731
        mem_k = memory + pos
        if self.pre_norm:
            x = norms[0](tgt)
            tgt = tgt + drop(self_attn(x + query_pos, x + query_pos, x, self_mask, train))
            x = norms[1](tgt)
            tgt = tgt + drop(cross_attn(x + query_pos, mem_k, memory, key_valid, train))
            return tgt + drop(ffn(norms[2](tgt), train))
        x = tgt + query_pos
        tgt = norms[0](tgt + drop(self_attn(x, x, tgt, self_mask, train)))
        tgt = norms[1](tgt + drop(cross_attn(tgt + query_pos, mem_k, memory, key_valid, train)))
        return norms[2](tgt + drop(ffn(tgt, train)))


def point_sine_embed(points, num_feats, temperature=10000.0):
    """Sine embedding of normalized 2D points [..., 2] (x, y) -> [..., 2F]:
    y first, then x, sin/cos interleaved per frequency, scaled by 2*pi (the
    feature map's `PositionEmbeddingSine` evaluated at those points)."""
    dim_t = temperature ** (2 * (jnp.arange(num_feats) // 2) / num_feats)

    def one(v):
        e = v[..., None] * (2 * jnp.pi) / dim_t
        return jnp.stack([jnp.sin(e[..., 0::2]), jnp.cos(e[..., 1::2])], -1).reshape(
            e.shape[:-1] + (num_feats,))
    return jnp.concatenate([one(points[..., 1]), one(points[..., 0])], -1)


class ConditionalDecoderLayer(nn.Module):
    """Conditional DETR's decoder layer (Meng et al., 2021; post-norm).

    Self-attention as DETR's but with separate content and position
    projections. Cross-attention query and key are, per head,
    [content | spatial]: the spatial query is a projection of `query_sine`
    (the sine embedding of the query's reference point, scaled per channel
    from the decoder embedding), the spatial key a projection of the
    feature map's positions. The first layer also adds the projected
    object query to the content query and the spatial key to the content
    key. Projections are xavier-initialized with PyTorch's default biases.
    """
    d_model: int
    nhead: int
    dim_feedforward: int
    dropout: float
    first: bool
    dtype: object

    @nn.compact
    def __call__(self, tgt, memory, pos, query_pos, query_sine, key_valid, train=False,
                 self_mask=None):
        d, h = self.d_model, self.nhead
        hd = d // h
        dense = lambda name: nn.Dense(  # noqa: E731
            d, kernel_init=_xavier, bias_init=torch_default_bias(d), dtype=self.dtype, name=name)
        drop = lambda x: Dropout(self.dropout)(x, deterministic=not train)  # noqa: E731
        split = lambda x: x.reshape(x.shape[:2] + (h, hd))  # noqa: E731
        norms = [_layer_norm(f'norm{i}', self.dtype) for i in (1, 2, 3)]
        q = dense('sa_qcontent')(tgt) + dense('sa_qpos')(query_pos)
        k = dense('sa_kcontent')(tgt) + dense('sa_kpos')(query_pos)
        out, _ = _attend(split(q), split(k), split(dense('sa_v')(tgt)), self_mask, hd ** -0.5,
                         self.dropout, train, self.dtype)
        tgt = norms[0](tgt + drop(dense('sa_out')(out)))
        q, k = dense('ca_qcontent')(tgt), dense('ca_kcontent')(memory)
        k_pos = dense('ca_kpos')(pos)
        if self.first:
            q, k = q + dense('ca_qpos')(query_pos), k + k_pos
        q = jnp.concatenate([split(q), split(dense('ca_qpos_sine')(query_sine))], -1)
        k = jnp.concatenate([split(k), split(k_pos)], -1)
        out, weights = _attend(q, k, split(dense('ca_v')(memory)), key_valid, (2 * hd) ** -0.5,
                               self.dropout, train, self.dtype)
        self.sow('intermediates', 'cross_attention_weights', weights)
        tgt = norms[1](tgt + drop(dense('ca_out')(out)))
        ffn = _FFN(self.d_model, self.dim_feedforward, self.dropout, self.dtype, name='ffn')
        return norms[2](tgt + drop(ffn(tgt, train)))


class XavierMLP(nn.Module):
    """Linear layers with ReLU between them (xavier kernels, PyTorch biases)."""
    features: tuple
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.features):
            x = nn.Dense(f, kernel_init=_xavier, bias_init=torch_default_bias(x.shape[-1]),
                         dtype=self.dtype, name=f'layers_{i}')(x)
            x = nn.relu(x) if i < len(self.features) - 1 else x
        return x


class Transformer(nn.Module):
    """Returns (hs [L, B, Q, D] after the decoder's final norm, memory [B, S, D])
    and, with `conditional` (Conditional DETR's decoder), the queries'
    reference points [B, Q, 2] (x, y in [0, 1]) as a third value.

    `queries` (training only, `boosters.TrainingQueries`' dict): the
    decoder's queries `tgt` and `query_pos` [B, Qt, D] instead of
    `query_embed`'s, self-attention restricted by `self_mask` [B, Qt, Qt],
    and the last `dn_reference.shape[1]` queries' reference points given
    (conditional decoder); None: `query_embed` [Q, D] alone."""
    d_model: int
    nhead: int
    num_encoder_layers: int
    num_decoder_layers: int
    dim_feedforward: int
    dropout: float
    pre_norm: bool
    remat: bool
    conditional: bool
    dtype: object

    @nn.compact
    def __call__(self, src, key_valid, query_embed, pos, train=False, queries=None):
        kw = dict(d_model=self.d_model, nhead=self.nhead,
                  dim_feedforward=self.dim_feedforward, dropout=self.dropout,
                  pre_norm=self.pre_norm, dtype=self.dtype)
        # static_argnums count `self`: `train` is the 4th (encoder) / 6th argument.
        enc_cls = nn.remat(EncoderLayer, static_argnums=(4,)) if self.remat else EncoderLayer
        dec_cls = nn.remat(DecoderLayer, static_argnums=(6,)) if self.remat else DecoderLayer
        memory = src
        for i in range(self.num_encoder_layers):
            memory = enc_cls(**kw, name=f'encoder_layers_{i}')(memory, pos, key_valid, train)
        if self.pre_norm:
            memory = _layer_norm('encoder_norm', self.dtype)(memory)
        b = src.shape[0]
        self_mask = None
        if queries is None:
            query_pos = jnp.broadcast_to(query_embed[None].astype(src.dtype),
                                         (b,) + query_embed.shape)
            tgt = jnp.zeros_like(query_pos)
        else:
            tgt, query_pos, self_mask = queries['tgt'], queries['query_pos'], queries['self_mask']
        dec_norm = _layer_norm('decoder_norm', self.dtype)
        hs = []
        if self.conditional:
            d = self.d_model
            ref = jax.nn.sigmoid(XavierMLP((d, 2), self.dtype, name='ref_point_head')(query_pos))
            if queries is not None and queries['dn_reference'] is not None:
                given = queries['dn_reference'].astype(ref.dtype)
                ref = jnp.concatenate([ref[:, :ref.shape[1] - given.shape[1]], given], 1)
            sine = point_sine_embed(ref, d // 2).astype(self.dtype)
            query_scale = XavierMLP((d, d), self.dtype, name='query_scale')
            layer_cls = (nn.remat(ConditionalDecoderLayer, static_argnums=(7,)) if self.remat
                         else ConditionalDecoderLayer)
            for i in range(self.num_decoder_layers):
                # each layer's un-normed input, as the original (not HF with aux loss)
                scale = 1.0 if i == 0 else query_scale(tgt)
                tgt = layer_cls(
                    d, self.nhead, self.dim_feedforward, self.dropout, i == 0, self.dtype,
                    name=f'decoder_layers_{i}')(tgt, memory, pos, query_pos, sine * scale,
                                                key_valid, train, self_mask)
                hs.append(dec_norm(tgt))
            return jnp.stack(hs), memory, ref
        for i in range(self.num_decoder_layers):
            tgt = dec_cls(**kw, name=f'decoder_layers_{i}')(
                tgt, memory, pos, query_pos, key_valid, train, self_mask)
            hs.append(dec_norm(tgt))
        return jnp.stack(hs), memory
