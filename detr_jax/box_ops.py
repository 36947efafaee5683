"""Box conversions, IoU and generalized IoU (batched, NaN-free).

Boxes are (cx, cy, w, h) or (x0, y0, x1, y1) in the last axis. Unlike the
original, which asserts on degenerate boxes, every function here returns
finite values *and gradients* for zero-area boxes: divisions use a
denominator that is replaced by 1 where it is 0 (the numerator is then 0).
"""
import jax.numpy as jnp


def box_cxcywh_to_xyxy(b):
    cx, cy, w, h = jnp.moveaxis(b, -1, 0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_xyxy_to_cxcywh(b):
    x0, y0, x1, y1 = jnp.moveaxis(b, -1, 0)
    return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def box_area(b_xyxy):
    return (b_xyxy[..., 2] - b_xyxy[..., 0]) * (b_xyxy[..., 3] - b_xyxy[..., 1])


def _safe_div(num, den):
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _iou_parts(a, b):
    """a [..., 4], b [..., 4] broadcastable xyxy -> (iou, union, hull area)."""
    area_a, area_b = box_area(a), box_area(b)
    lt = jnp.maximum(a[..., :2], b[..., :2])
    rb = jnp.minimum(a[..., 2:], b[..., 2:])
    wh = jnp.clip(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    iou = _safe_div(inter, union)
    lt_c = jnp.minimum(a[..., :2], b[..., :2])
    rb_c = jnp.maximum(a[..., 2:], b[..., 2:])
    wh_c = jnp.clip(rb_c - lt_c, 0)
    return iou, union, wh_c[..., 0] * wh_c[..., 1]


def box_iou(a, b):
    """Pairwise IoU: a [..., N, 4], b [..., M, 4] (xyxy) -> [..., N, M]."""
    return _iou_parts(a[..., :, None, :], b[..., None, :, :])[0]


def generalized_box_iou(a, b):
    """Pairwise GIoU: a [..., N, 4], b [..., M, 4] (xyxy) -> [..., N, M]."""
    return elementwise_giou(a[..., :, None, :], b[..., None, :, :])


def elementwise_giou(a, b):
    """GIoU of matched pairs (broadcasting a and b, xyxy)."""
    iou, union, hull = _iou_parts(a, b)
    return iou - _safe_div(hull - union, hull)
