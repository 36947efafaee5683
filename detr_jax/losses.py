"""The set criterion of DETR (the original's SetCriterion), jittable and
independent of how many devices compute it.

Written on global arrays: under jit with a sharded batch, the sums below
are global sums (XLA inserts the collectives), so box and mask terms are
global sums over the global number of real targets, and the class term is
the weighted mean over the global batch, whatever the device count.
"""
import jax
import jax.numpy as jnp

from detr_jax.box_ops import box_cxcywh_to_xyxy, elementwise_giou
from detr_jax.matching import match, matching_cost


def _gather(x, idx):
    """x [B, Q, ...], idx [B, M] -> [B, M, ...]."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _label_terms(logits, idx, targets, eos_coef, with_class_error, num_boxes=None,
                 class_head='softmax'):
    b, q, c1 = logits.shape
    # the class index of "no object": the last logit, or none at all (sigmoid)
    no_object = c1 if class_head == 'sigmoid' else c1 - 1
    valid, labels = targets['valid'], targets['labels']
    # [B, M, Q] assignment as a one-hot (not a scatter: elementwise ops stay
    # on their shard under a batch-sharded jit, a scatter is gathered)
    assigned = (idx[..., None] == jnp.arange(q)) & valid[..., None]
    target_classes = jnp.where(assigned.any(1),
                               (assigned * labels[..., None].astype(jnp.int32)).sum(1), no_object)
    if class_head == 'sigmoid':
        # Conditional DETR's: the focal loss of every (query, class) logit,
        # "no object" being all zeros, summed and divided by num_boxes
        onehot = jax.nn.one_hot(target_classes, c1, dtype=jnp.float32)
        out = {'loss_ce': sigmoid_focal_loss(logits.astype(jnp.float32), onehot).sum()
               / num_boxes}
        card_pred = (jax.nn.sigmoid(logits.max(-1)) > 0.5).sum(1)
    else:
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, target_classes[..., None], axis=-1)[..., 0]
        w = jnp.where(target_classes == c1 - 1, eos_coef, 1.0)
        out = {'loss_ce': (w * nll).sum() / w.sum()}
        card_pred = (jnp.argmax(logits, -1) != c1 - 1).sum(1)
    out['cardinality_error'] = jnp.abs(card_pred - valid.sum(1)).astype(jnp.float32).mean()
    if with_class_error:
        correct = (jnp.argmax(_gather(logits, idx), -1) == labels) & valid
        n = valid.sum()
        acc = jnp.where(n > 0, 100.0 * correct.sum() / jnp.maximum(n, 1), 0.0)
        out['class_error'] = 100.0 - acc
    out['cardinality_error'] = jax.lax.stop_gradient(out['cardinality_error'])
    if 'class_error' in out:
        out['class_error'] = jax.lax.stop_gradient(out['class_error'])
    return out


def _box_terms(boxes, idx, targets, num_boxes):
    valid = targets['valid']
    src, tgt = _gather(boxes, idx), targets['boxes']
    l1 = jnp.abs(src - tgt).sum(-1)
    giou = elementwise_giou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
    return {'loss_bbox': jnp.where(valid, l1, 0.0).sum() / num_boxes,
            'loss_giou': jnp.where(valid, 1.0 - giou, 0.0).sum() / num_boxes}


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    """Per-pixel focal loss (RetinaNet), same shape as the inputs."""
    prob = jax.nn.sigmoid(logits)
    ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    return (alpha * targets + (1 - alpha) * (1 - targets)) * loss


# Target slots whose masks are upsampled to full resolution at a time. The
# original upsamples only the real targets; with static shapes every one of
# `max_boxes` slots is a [H, W] float map, which for COCO (100 slots,
# 1248x1344, 4 images a chip) is GBs per tensor: in chunks (each recomputed
# in the backward pass) the loss holds one chunk at a time.
MASK_LOSS_CHUNK = 8


def _mask_focal_dice(src, tgt):
    """Mask logits [B, c, h, w] upsampled to the targets' [B, c, H, W] ->
    (mean focal loss, dice loss) per slot, [B, c] each."""
    # bilinear, half-pixel centres: PyTorch's align_corners=False upsampling
    src = jax.image.resize(src, src.shape[:2] + tgt.shape[2:], 'linear').astype(jnp.float32)
    tgt = tgt.astype(jnp.float32)
    src, tgt = src.reshape(src.shape[:2] + (-1,)), tgt.reshape(tgt.shape[:2] + (-1,))
    focal = sigmoid_focal_loss(src, tgt).mean(-1)
    prob = jax.nn.sigmoid(src)
    dice = 1 - (2 * (prob * tgt).sum(-1) + 1) / (prob.sum(-1) + tgt.sum(-1) + 1)
    return focal, dice


def _mask_terms(pred_masks, idx, targets, num_boxes):
    valid, tgt = targets['valid'], targets['masks']
    src = _gather(pred_masks, idx)  # [B, M, h, w]
    b, m = valid.shape
    c = min(m, MASK_LOSS_CHUNK)
    if c == m:
        focal, dice = _mask_focal_dice(src, tgt)
    else:
        pad = ((0, 0), (0, -m % c), (0, 0), (0, 0))
        chunks = lambda x: jnp.moveaxis(  # noqa: E731
            jnp.pad(x, pad).reshape((b, -1, c) + x.shape[2:]), 1, 0)
        focal, dice = jax.lax.map(lambda st: jax.checkpoint(_mask_focal_dice)(*st),
                                  (chunks(src), chunks(tgt)))
        focal, dice = (jnp.moveaxis(v, 0, 1).reshape(b, -1)[:, :m] for v in (focal, dice))
    return {'loss_mask': jnp.where(valid, focal, 0.0).sum() / num_boxes,
            'loss_dice': jnp.where(valid, dice, 0.0).sum() / num_boxes}


def weight_dict(loss_cfg, num_aux=0, masks=False, num_groups=1, dn=False):
    """Loss term -> weight, with `_{i}` copies for auxiliary decoder layers,
    `_g{g}` copies for Group DETR's groups 1..`num_groups`-1 and, with `dn`,
    the denoising terms `loss_dn_ce`, `loss_dn_bbox`, `loss_dn_giou` (and
    their `_{i}`), weighted as their matching counterparts."""
    base = {'loss_ce': loss_cfg['ce'], 'loss_bbox': loss_cfg['bbox'], 'loss_giou': loss_cfg['giou']}
    per_layer = dict(base)
    if masks:
        base.update(loss_mask=loss_cfg['mask'], loss_dice=loss_cfg['dice'])
    group = dict(base)
    for i in range(num_aux):
        group.update({f'{k}_{i}': v for k, v in per_layer.items()})
    out = dict(group)
    for g in range(1, num_groups):
        out.update({f'{k}_g{g}': v for k, v in group.items()})
    if dn:
        dn_terms = {k.replace('loss_', 'loss_dn_'): v for k, v in per_layer.items()}
        out.update(dn_terms)
        for i in range(num_aux):
            out.update({f'{k}_{i}': v for k, v in dn_terms.items()})
    return out


def _groups(outputs):
    """The matching query groups: the outputs themselves (group 0) and
    Group DETR's `group_outputs`."""
    return [outputs] + list(outputs.get('group_outputs', []))


def class_head_of(config):
    """The model's classifier kind (`config.model.class_head`; 'softmax'
    when the config has no model section)."""
    model = config.get('model') if hasattr(config, 'get') else None
    return (model or {}).get('class_head', 'softmax')


def matching_costs(outputs, targets, matcher_cfg, class_head='softmax'):
    """The matching cost of every decoder layer of every query group
    [G * L, B, Q, M] (`matching.matching_cost`, for the model's
    `class_head`): group g's layer i is at g * L + i, layer L-1 being the
    final output."""
    layers = [o for grp in _groups(outputs) for o in list(grp.get('aux_outputs', [])) + [grp]]
    logits = jnp.stack([o['pred_logits'] for o in layers])
    boxes = jnp.stack([o['pred_boxes'] for o in layers])
    return matching_cost(logits, boxes, targets['labels'][None], targets['boxes'][None],
                         targets['valid'][None], matcher_cfg, class_head)


def match_all_layers(outputs, targets, matcher_cfg, mesh=None, class_head='softmax'):
    """Query index per target [G * L, B, M] (`matching_costs`' order)."""
    return match(matching_costs(outputs, targets, matcher_cfg, class_head), targets['valid'],
                 matcher_cfg['solver'], mesh)


def _denoising_terms(dn_outputs, targets, num_boxes, class_head='softmax'):
    """DN-DETR's reconstruction loss, no matching: denoising query k*M + m
    predicts target slot m (`boosters.split_outputs`). Per decoder layer
    [L]: the cross-entropy of the true class, L1 and 1 - GIoU of the true
    box, summed over real targets and divided by `num_boxes` x the number
    of denoising groups (the 'sigmoid' head: the focal loss of the
    query's logits against the true class instead of the cross-entropy)."""
    logits, boxes = dn_outputs['pred_logits'], dn_outputs['pred_boxes']  # [B, L, K*M, ...]
    k = logits.shape[2] // targets['valid'].shape[1]
    valid = jnp.tile(targets['valid'], (1, k))[:, None]
    labels = jnp.tile(targets['labels'], (1, k))[:, None]
    tgt = jnp.tile(targets['boxes'], (1, k, 1))[:, None]
    labels = jnp.broadcast_to(labels, logits.shape[:3])
    if class_head == 'sigmoid':
        onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
        nll = sigmoid_focal_loss(logits.astype(jnp.float32), onehot).sum(-1)
    else:
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    l1 = jnp.abs(boxes - tgt).sum(-1)
    giou = elementwise_giou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt))
    n = num_boxes * k
    total = lambda x: jnp.where(valid, x, 0.0).sum((0, 2)) / n  # noqa: E731
    return {'loss_dn_ce': total(nll), 'loss_dn_bbox': total(l1), 'loss_dn_giou': total(1.0 - giou)}


def set_criterion(outputs, targets, config, mesh=None, idx=None):
    """DETR's loss. Returns (total, metrics).

    outputs: `pred_logits` [B, Q, C+1], `pred_boxes` [B, Q, 4] (cxcywh),
      optional `aux_outputs` (list of such dicts) and `pred_masks` [B, Q, h, w].
    targets: `labels` [B, M] int, `boxes` [B, M, 4] (cxcywh, normalized),
      `valid` [B, M] bool, and `masks` [B, M, H, W] when `pred_masks` is given.
    config: has `matcher` (cost_class, cost_bbox, cost_giou, solver) and
      `loss` (ce, bbox, giou, mask, dice, eos_coef); its `model` section,
      if any, names the `class_head` ('softmax' when absent).
    mesh: the device mesh of a sharded batch ('data' axis), for the scipy
      solver to run per shard.
    idx: the assignment [L, B, M] (`match_all_layers`) when it is computed
      elsewhere (the train step's `match` program); no stop_gradient needed.
    metrics holds every unweighted term (loss_ce, loss_bbox, loss_giou,
    loss_mask, loss_dice, cardinality_error, class_error, `_{i}` for aux
    layer i) and `loss` (the weighted total).

    Training boosters (`models/boosters.py`): `outputs['group_outputs']`
    (Group DETR) are matched and lossed like `outputs`, group by group,
    their terms named with `_g{g}`, and `idx` is then [G * L, B, M];
    `outputs['dn_outputs']` adds the denoising terms `loss_dn_*`
    (`_denoising_terms`). Every term enters the total with its weight.
    """
    loss_cfg, matcher_cfg = config['loss'], config['matcher']
    class_head = class_head_of(config)
    aux = list(outputs.get('aux_outputs', []))
    if idx is None:
        idx = match_all_layers(outputs, targets, matcher_cfg, mesh, class_head)
    num_boxes = jnp.maximum(targets['valid'].sum().astype(jnp.float32), 1.0)
    metrics = {}
    groups = _groups(outputs)
    for g, group in enumerate(groups):
        layers = list(group.get('aux_outputs', [])) + [group]
        suffix = f'_g{g}' if g else ''
        for i, out in enumerate(layers):
            last = i == len(aux)
            j = g * len(layers) + i
            terms = _label_terms(out['pred_logits'], idx[j], targets, loss_cfg['eos_coef'],
                                 last and not g, num_boxes, class_head)
            if g:  # the cardinality of group 0 says it
                del terms['cardinality_error']
            terms.update(_box_terms(out['pred_boxes'], idx[j], targets, num_boxes))
            if last and 'pred_masks' in out:
                terms.update(_mask_terms(out['pred_masks'], idx[j], targets, num_boxes))
            metrics.update({(k if last else f'{k}_{i}') + suffix: v for k, v in terms.items()})
    if 'dn_outputs' in outputs:
        for k, v in _denoising_terms(outputs['dn_outputs'], targets, num_boxes,
                                     class_head).items():
            metrics[k] = v[-1]
            metrics.update({f'{k}_{i}': v[i] for i in range(len(aux))})
    weights = weight_dict(loss_cfg, len(aux), 'pred_masks' in outputs, len(groups),
                          'dn_outputs' in outputs)
    total = sum(weights[k] * metrics[k] for k in weights)
    metrics['loss'] = total
    return total, metrics
