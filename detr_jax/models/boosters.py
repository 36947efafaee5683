"""Training-only decoder queries: Group DETR's extra query groups (Chen et
al., 2022) and DN-DETR's denoising queries (Li et al., 2022).

Both exist only while training (`train=True`): at evaluation the decoder
sees the model's own `num_queries` queries alone, so the inference model is
DETR's (the original's checkpoints load, outputs are bitwise the plain
model's). Their parameters live under `params['training_queries']`, which
a plain model ignores (`strip_training_only` drops them for export).

Queries are laid out along the decoder's query axis as
`[group 0 (num_queries) | groups 1..G-1 (num_queries each) | denoising
group 0 (M slots) | ... | denoising group K-1]`, M = the batch's target
slots (`max_boxes`); each denoising group holds every target of the image
once, noised. Self-attention is block-diagonal over those groups (a query
sees only its own group; a denoising query also never sees a padded target
slot's dummy query), so no information passes between groups, and none from
the denoising queries to the matching ones.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.device_rows import batch_rows
from detr_jax.models.transformer import XavierMLP, point_sine_embed

TRAINING_ONLY = 'training_queries'


def boosted(num_groups, dn_groups):
    return num_groups > 1 or dn_groups > 0


def strip_training_only(params):
    """`params` without the training-only queries' parameters (what a plain
    DETR of the same config has)."""
    return {k: v for k, v in params.items() if k != TRAINING_ONLY}


def noised_targets(rng, labels, boxes, num_classes, box_noise, label_noise):
    """DN-DETR's noise: each label replaced by a uniformly drawn class with
    probability `label_noise`; each box (cx, cy, w, h, normalized) moved by
    up to `box_noise` x (w/2, h/2) in its centre and scaled by up to
    1 +- `box_noise` in its size, clipped to [0, 1]. `labels` [B, N],
    `boxes` [B, N, 4]; a batch split over devices draws this device's rows
    of the whole batch's noise (`device_rows.batch_rows`)."""
    k_flip, k_cls, k_box = jax.random.split(rng, 3)
    b, n = labels.shape
    rows = lambda draw: batch_rows(draw, b)  # noqa: E731
    flip = rows(lambda r: jax.random.uniform(k_flip, (r, n))) < label_noise
    labels = jnp.where(flip, rows(lambda r: jax.random.randint(k_cls, (r, n), 0, num_classes)),
                       labels)
    wh = boxes[..., 2:]
    diff = jnp.concatenate([wh / 2, wh], -1)
    shift = rows(lambda r: jax.random.uniform(k_box, (r, n, 4), minval=-1.0, maxval=1.0))
    return labels, jnp.clip(boxes + shift * diff * box_noise, 0.0, 1.0)


class TrainingQueries(nn.Module):
    """The extra queries of one training batch.

    `__call__(query_embed [Q, D], targets, noise)` with `targets`
    (`labels` [B, M] int, `boxes` [B, M, 4] cxcywh normalized, `valid`
    [B, M] bool; only read with `dn_groups`) returns a dict:
    `tgt` [B, Qt, D] and `query_pos` [B, Qt, D] for all Qt queries
    (group 0's first, exactly as the plain decoder makes them),
    `dn_reference` [B, K*M, 2] (the noised box centres, the conditional
    decoder's reference points for the denoising queries) or None, and
    `self_mask` [B, Qt, Qt] bool (True: query i may attend to query j).
    `noise=False` (parameter initialization) skips the random noise.
    """
    num_queries: int
    num_groups: int
    dn_groups: int
    num_classes: int
    hidden_dim: int
    box_noise: float
    label_noise: float
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, query_embed, targets, noise=True):
        q, d = self.num_queries, self.hidden_dim
        b = targets['valid'].shape[0]
        pos = [jnp.broadcast_to(query_embed[None], (b, q, d))]
        group_ids = [jnp.zeros((q,), jnp.int32)]
        key_real = [jnp.ones((b, q), bool)]
        if self.num_groups > 1:
            extra = self.param('group_query_embed', nn.initializers.normal(1.0),
                               (self.num_groups - 1, q, d))
            pos.append(jnp.broadcast_to(extra.reshape(1, -1, d), (b, extra.shape[0] * q, d)))
            group_ids.append(jnp.repeat(jnp.arange(1, self.num_groups), q))
            key_real.append(jnp.ones((b, extra.shape[0] * q), bool))
        tgt = [jnp.zeros((b, self.num_groups * q, d))]
        dn_reference = None
        if self.dn_groups:
            k = self.dn_groups
            labels = jnp.tile(targets['labels'], (1, k))
            boxes = jnp.tile(targets['boxes'], (1, k, 1))
            m = targets['valid'].shape[1]
            if noise:
                labels, boxes = noised_targets(self.make_rng('noise'), labels, boxes,
                                               self.num_classes, self.box_noise,
                                               self.label_noise)
            label_embed = self.param('dn_label_embed', nn.initializers.normal(1.0),
                                     (self.num_classes + 1, d))
            tgt.append(jnp.take(label_embed, labels, axis=0))
            sine = jnp.concatenate([point_sine_embed(boxes[..., :2], d // 2),
                                    point_sine_embed(boxes[..., 2:], d // 2)], -1)
            pos.append(XavierMLP((d, d), self.dtype, name='dn_box_embed')(sine))
            group_ids.append(self.num_groups + jnp.repeat(jnp.arange(k), m))
            key_real.append(jnp.tile(targets['valid'], (1, k)))
            dn_reference = boxes[..., :2]
        gid = jnp.concatenate(group_ids)
        keys = jnp.concatenate(key_real, 1)
        n = gid.shape[0]
        # every query sees itself, so no row is empty (a padded slot's dummy)
        same_group = (gid[:, None] == gid[None, :])[None]
        self_mask = (same_group & keys[:, None, :]) | jnp.eye(n, dtype=bool)
        cast = lambda x: x.astype(self.dtype)  # noqa: E731
        return {'tgt': cast(jnp.concatenate(tgt, 1)), 'query_pos': cast(jnp.concatenate(pos, 1)),
                'dn_reference': dn_reference, 'self_mask': self_mask}


def split_outputs(out, num_queries, num_groups, dn_groups):
    """The heads' outputs over all training queries (`pred_logits` [B, Qt,
    C+1], `pred_boxes` [B, Qt, 4], `aux_outputs` likewise) -> group 0 under
    the usual keys, `group_outputs` (a list: one such dict per group 1..G-1,
    aux included) and, with denoising, `dn_outputs`: `pred_logits`
    [B, L, K*M, C+1] and `pred_boxes` [B, L, K*M, 4] over the decoder's L
    layers (the last is the final one; batch-first like every output);
    denoising query k*M + m reconstructs target slot m."""
    q, g = num_queries, num_groups
    layers = list(out.get('aux_outputs', [])) + [{k: out[k] for k in ('pred_logits',
                                                                      'pred_boxes')}]

    def group(i):
        sl = lambda x: x[:, i * q:(i + 1) * q]  # noqa: E731
        res = {k: sl(v) for k, v in layers[-1].items()}
        if 'aux_outputs' in out:
            res['aux_outputs'] = [{k: sl(v) for k, v in a.items()} for a in layers[:-1]]
        return res

    res = group(0)
    if g > 1:
        res['group_outputs'] = [group(i) for i in range(1, g)]
    if dn_groups:
        res['dn_outputs'] = {k: jnp.stack([lay[k][:, g * q:] for lay in layers], axis=1)
                             for k in ('pred_logits', 'pred_boxes')}
    return res
