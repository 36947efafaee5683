"""Hungarian matching of predictions to (padded) ground truth.

`match(cost, valid, solver, mesh)` returns, for every decoder layer, image
and target slot, the index of the query assigned to it; padded target slots
get 0 and must be ignored through `valid`.

Two solvers, same output:
- 'scipy' (default): `scipy.optimize.linear_sum_assignment` on the host
  through `jax.pure_callback`, one callback for all layers and images of a
  shard. Under a mesh it runs inside `jax.shard_map`, so each device's host
  solves its own rows and no cost matrix is gathered to one device.
- 'optax': `optax.assignment.hungarian_algorithm`, vmapped over layers and
  images, entirely on device (for TPUs, where a host round trip is costly).
Padded target columns are given a constant cost of 0, which leaves the
optimal assignment of the real columns unchanged (every assignment of them
extends to the padding in the same number of ways at the same cost).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
from jax.sharding import PartitionSpec as P

from detr_jax.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from detr_jax.sharding import BATCH_AXIS


def matching_cost(logits, boxes, tgt_labels, tgt_boxes, valid, matcher_cfg, class_head='softmax'):
    """The original HungarianMatcher's cost, [..., Q, M].

    cost_class * -p(class) + cost_bbox * L1(cxcywh) + cost_giou * -GIoU;
    padded target columns are 0. With the 'sigmoid' `class_head`
    (Conditional DETR's), the class cost is its focal one:
    alpha (1-p)^2 (-log p) - (1-alpha) p^2 (-log(1-p)), alpha = 0.25.
    """
    if class_head == 'sigmoid':
        prob = jax.nn.sigmoid(logits.astype(jnp.float32))
        neg = 0.75 * prob ** 2 * -jnp.log(1 - prob + 1e-8)
        pos = 0.25 * (1 - prob) ** 2 * -jnp.log(prob + 1e-8)
        cost_class = jnp.take_along_axis(pos - neg, tgt_labels[..., None, :], axis=-1)
    else:
        prob = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        cost_class = -jnp.take_along_axis(prob, tgt_labels[..., None, :], axis=-1)
    cost_bbox = jnp.abs(boxes[..., :, None, :] - tgt_boxes[..., None, :, :]).sum(-1)
    cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))
    c = (matcher_cfg['cost_bbox'] * cost_bbox + matcher_cfg['cost_class'] * cost_class
         + matcher_cfg['cost_giou'] * cost_giou)
    return jnp.where(valid[..., None, :], c, 0.0)


def _scipy_host(cost, valid):
    """cost [L, B, Q, M], valid [B, M] (numpy) -> [L, B, M] int32.

    Non-finite costs (a diverged model) become large finite ones, so the
    step completes and the loop reports the non-finite loss by step and term
    instead of an error from inside the callback."""
    cost, valid = np.asarray(cost), np.asarray(valid)
    if not np.isfinite(cost).all():
        cost = np.nan_to_num(cost, nan=1e30, posinf=1e30, neginf=-1e30)
    out = np.zeros(cost.shape[:2] + cost.shape[3:], np.int32)
    for b in range(cost.shape[1]):
        cols = np.flatnonzero(valid[b])
        if cols.size == 0:
            continue
        for layer in range(cost.shape[0]):
            rows, c = scipy.optimize.linear_sum_assignment(cost[layer, b][:, cols])
            out[layer, b, cols[c]] = rows
    return out


def _scipy_match(cost, valid):
    shape = jax.ShapeDtypeStruct(cost.shape[:2] + cost.shape[3:], jnp.int32)
    return jax.pure_callback(_scipy_host, shape, cost, valid, vmap_method='sequential')


def _optax_match_one(cost_qm):
    tgt, qry = optax.assignment.hungarian_algorithm(cost_qm.T)
    return jnp.zeros((cost_qm.shape[1],), jnp.int32).at[tgt].set(qry.astype(jnp.int32))


def match(cost, valid, solver='scipy', mesh=None, axis=BATCH_AXIS):
    """cost [L, B, Q, M], valid [B, M] -> query index per target [L, B, M].

    With `mesh`, the batch axis is split over `axis` and each shard is solved
    where it lives.
    """
    if cost.shape[-1] > cost.shape[-2]:
        raise ValueError(f'more target slots ({cost.shape[-1]}) than queries ({cost.shape[-2]}): '
                         'max_boxes must not exceed num_queries')
    cost = jax.lax.stop_gradient(cost)
    if solver == 'optax':
        return jax.vmap(jax.vmap(_optax_match_one))(cost)
    if solver != 'scipy':
        raise ValueError(f"config.matcher.solver must be 'scipy' or 'optax', got {solver!r}")
    if mesh is None or mesh.size == 1:
        return _scipy_match(cost, valid)
    return jax.shard_map(
        _scipy_match, mesh=mesh, in_specs=(P(None, axis), P(axis)),
        out_specs=P(None, axis), check_vma=False)(cost, valid)
