"""Model outputs -> detections in original-image pixels (the original's
PostProcess), plus a score threshold / top-k for users."""
import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.box_ops import box_cxcywh_to_xyxy
from detr_jax.panoptic_format import resize_ids


# How detections are read off the heads (`config.model.detections`)
DETECTION_KINDS = ('best_class', 'top_pairs')


def class_probabilities(logits, class_head='softmax'):
    """Per-class scores [..., C] of the real classes: the softmax over the
    C+1 logits without "no object" (the original's head) or each logit's
    sigmoid ('sigmoid' head, C logits)."""
    logits = logits.astype(jnp.float32)
    if class_head == 'sigmoid':
        return jax.nn.sigmoid(logits)
    return jax.nn.softmax(logits, -1)[..., :-1]


def detections(outputs, orig_sizes, kind='best_class', class_head='softmax'):
    """`scores`, `labels`, `queries` (the query each came from) [B, Q] and
    `boxes` [B, Q, 4] xyxy in pixels of `orig_sizes` [B, 2] (h, w).

    `kind` 'best_class' (the original's PostProcess): each query's best
    real class (no-object dropped), in query order. 'top_pairs'
    (Deformable and Conditional DETR's): the Q best (query, class) pairs
    over all queries and real classes, best first, so a query may give
    two detections of different classes. `class_head`: the model's
    (`class_probabilities`)."""
    prob = class_probabilities(outputs['pred_logits'], class_head)
    b, q, c = prob.shape
    boxes = outputs['pred_boxes']
    if kind == 'best_class':
        scores, labels = prob.max(-1), prob.argmax(-1)
        queries = jnp.broadcast_to(jnp.arange(q), (b, q))
    elif kind == 'top_pairs':
        scores, pairs = jax.lax.top_k(prob.reshape(b, q * c), q)
        queries, labels = pairs // c, pairs % c
        boxes = jnp.take_along_axis(boxes, queries[..., None], axis=1)
    else:
        raise ValueError(f'detections kind {kind!r}: one of {DETECTION_KINDS}')
    h, w = orig_sizes[:, 0].astype(jnp.float32), orig_sizes[:, 1].astype(jnp.float32)
    scale = jnp.stack([w, h, w, h], -1)[:, None, :]
    return {'scores': scores, 'labels': labels, 'queries': queries,
            'boxes': box_cxcywh_to_xyxy(boxes) * scale}


def select(dets, threshold=0.0, top_k=None):
    """Per image {'scores', 'labels', 'boxes', 'queries' (the query each
    came from: `dets['queries']` when given, else the position)} above
    `threshold`, best first (ties in position order), at most `top_k`
    (host-side, numpy)."""
    out = []
    scores, labels, boxes = (np.asarray(dets[k]) for k in ('scores', 'labels', 'boxes'))
    queries = (np.asarray(dets['queries']) if 'queries' in dets
               else np.broadcast_to(np.arange(scores.shape[1]), scores.shape))
    for s, l, b, q in zip(scores, labels, boxes, queries):
        order = np.argsort(-s, kind='stable')
        order = order[s[order] > threshold][:top_k]
        out.append({'scores': s[order], 'labels': l[order], 'boxes': b[order],
                    'queries': q[order]})
    return out


# --- masks: the original's PostProcessSegm and PostProcessPanoptic -----------

def _bilinear_weights(in_size, out_size, canvas):
    """[canvas, in_size] interpolation matrix of PyTorch's bilinear
    (align_corners=False) from `in_size` to `out_size` (traced) pixels,
    in PyTorch's float32 arithmetic: source = (i + 0.5) * in/out - 0.5,
    clamped at 0; rows from `out_size` on are 0."""
    scale = jnp.float32(in_size) / out_size.astype(jnp.float32)
    src = jnp.maximum((jnp.arange(canvas, dtype=jnp.float32) + 0.5) * scale - 0.5, 0.0)
    i0 = jnp.floor(src).astype(jnp.int32)
    lam1 = jnp.clip(src - i0, 0.0, 1.0)
    i1 = jnp.minimum(i0 + 1, in_size - 1)
    cols = jnp.arange(in_size)
    w = ((cols == i0[:, None]) * (1.0 - lam1)[:, None] + (cols == i1[:, None]) * lam1[:, None])
    return jnp.where((jnp.arange(canvas) < out_size)[:, None], w, 0.0).astype(jnp.float32)


def resize_masks(masks, sizes, canvas_hw):
    """Mask logits [B, Q, h, w] resized bilinearly to a size per image,
    `sizes` [B, 2] (h, w; traced values, so one compilation serves every
    size), in the top-left corner of a [canvas_h, canvas_w] canvas (0
    beyond `sizes`) -> float32 [B, Q, canvas_h, canvas_w].

    PyTorch's `F.interpolate(mode='bilinear', align_corners=False)`:
    half-pixel centres, no antialiasing when shrinking, edge pixels
    repeated (as two sparse matrices, applied at full float32 precision).
    Like the original, the whole (padded) mask is stretched to the size;
    nothing is cropped first."""
    _, _, h, w = masks.shape
    hi = jax.lax.Precision.HIGHEST

    def one(m, size):
        wy = _bilinear_weights(h, size[0], canvas_hw[0])
        wx = _bilinear_weights(w, size[1], canvas_hw[1])
        rows = jnp.einsum('Yy,qyx->qYx', wy, m.astype(jnp.float32), precision=hi)
        return jnp.einsum('qYx,Xx->qYX', rows, wx, precision=hi)
    return jax.vmap(one)(masks, sizes)


def segmentation_masks(pred_masks, sizes, threshold=0.5):
    """The original's PostProcessSegm on device: `pred_masks` [B, Q, h, w]
    logits, upsampled to the batch's largest `sizes` [B, 2] (the processed,
    unpadded image sizes), then sigmoid > `threshold` -> bool [B, Q, 4h,
    4w] (the padded image's size); image i's masks are the top-left
    `sizes[i]` of it (`masks_at_size` crops and resizes them)."""
    b, _, h, w = pred_masks.shape
    largest = jnp.broadcast_to(sizes.max(0), sizes.shape)
    return jax.nn.sigmoid(resize_masks(pred_masks, largest, (4 * h, 4 * w))) > threshold


def masks_at_size(masks, size, orig_size):
    """One image's masks of `segmentation_masks` [Q, H, W] (host) cropped
    to its processed `size` (h, w) and resized to `orig_size` with
    PyTorch's legacy nearest rule -> bool [Q, orig_h, orig_w]."""
    from detr_jax.models.layers import legacy_nearest_indices
    h, w = int(size[0]), int(size[1])
    ys = legacy_nearest_indices(h, int(orig_size[0]))
    xs = legacy_nearest_indices(w, int(orig_size[1]))
    return np.asarray(masks)[:, :h, :w][:, ys][:, :, xs]


def panoptic_queries(pred_logits, threshold):
    """The queries PostProcessPanoptic keeps: best class (no-object
    included) not no-object and its softmax score above `threshold` ->
    (keep bool [B, Q], labels [B, Q] int32)."""
    prob = jax.nn.softmax(pred_logits.astype(jnp.float32), -1)
    scores, labels = prob.max(-1), prob.argmax(-1).astype(jnp.int32)
    return (labels != pred_logits.shape[-1] - 1) & (scores > threshold), labels


def mask_argmax(pred_masks, keep, sizes):
    """Which kept query wins each pixel: `pred_masks` [B, Q, h, w] logits
    resized to `sizes` [B, 2] (`resize_masks`, canvas 4h x 4w), argmax over
    the queries with `keep` [B, Q] -> int32 [B, 4h, 4w] query indices (the
    first query on ties, as PyTorch's argmax; 0 where nothing is kept).

    The original takes the argmax of a softmax over the kept masks; the
    softmax is monotonic, so this is the same choice without it."""
    b, _, h, w = pred_masks.shape
    m = resize_masks(pred_masks, sizes, (4 * h, 4 * w))
    m = jnp.where(keep[:, :, None, None], m, -jnp.inf)
    return jnp.argmax(m, axis=1).astype(jnp.int32)


def panoptic_on_device(outputs, sizes, threshold):
    """The device part of `panoptic` (jittable; the eval step runs it):
    {'keep', 'labels' [B, Q] (`panoptic_queries`), 'winners' [B, 4h, 4w]
    (`mask_argmax`)}."""
    keep, labels = panoptic_queries(outputs['pred_logits'], threshold)
    return {'keep': keep, 'labels': labels,
            'winners': mask_argmax(outputs['pred_masks'], keep, sizes)}


_panoptic_on_device = jax.jit(panoptic_on_device, static_argnames='threshold')
_mask_argmax = jax.jit(mask_argmax)

def is_thing_per_class(label_map, num_classes, unmapped=False):
    """`panoptic`'s `is_thing`: bool [num_classes] from a label map's
    `isthing` (class index -> {'isthing', ...}); `unmapped` for an index
    the map lacks."""
    label_map = label_map or {}
    return np.array([bool(label_map.get(i, {}).get('isthing', unmapped))
                     for i in range(num_classes)])


# the original drops segments of at most this many pixels (at the output size)
MIN_SEGMENT_AREA = 4


def panoptic(outputs, sizes, orig_sizes, is_thing, threshold=0.85, label_map=None):
    """The original's PostProcessPanoptic for a batch of model outputs.

    outputs: `pred_logits` [B, Q, C+1], `pred_masks` [B, Q, h, w] (arrays
      on the device or the host).
    sizes: [B, 2] (h, w) of each image as the model saw it (unpadded);
      orig_sizes: [B, 2] the size to return the segments at.
    is_thing: bool per class index (stuff segments of one class merge;
      classes past its end are stuff).
    label_map: class index -> {'id', ...}: `category_id` is the dataset's
      id (else, and for a class the map lacks, the class index).

    Returns per image {'ids': int32 [orig_h, orig_w] segment ids (0 =
    void: no kept query), 'segments_info': [{'id', 'category_id',
    'label' (class index), 'isthing', 'area'}]}, ready for COCO's panoptic
    format (`panoptic_format.write_ids`). Segment ids are the original's
    plus one (the original numbers from 0, which COCO's format reads as
    void); they follow query order.

    The original's steps: keep queries (`panoptic_queries`), per-pixel
    argmax of the kept masks at `sizes` (`mask_argmax`, on device), stuff
    masks of one class merged into the first, the map resized to
    `orig_sizes` (PIL nearest), then while a segment has at most
    `MIN_SEGMENT_AREA` pixels: drop those and redo the argmax (the original
    merges stuff only in the first pass; so does this)."""
    sizes = np.asarray(sizes, np.int32)
    parts = _panoptic_on_device(outputs, sizes, float(threshold))
    return panoptic_segments({k: np.asarray(v) for k, v in parts.items()},
                             outputs['pred_masks'], sizes, orig_sizes, is_thing, label_map)


def panoptic_segments(parts, pred_masks, sizes, orig_sizes, is_thing, label_map=None):
    """The host part of `panoptic`: `parts` (`panoptic_on_device`'s, numpy)
    -> per image {'ids', 'segments_info'}. `pred_masks` [B, Q, h, w] (best
    left on the device) is read only for images that lose a small
    segment."""
    results = []
    is_thing = np.asarray(is_thing, bool)
    # a class index beyond `is_thing` (a head wider than the data) counts as stuff
    is_thing = np.pad(is_thing, (0, max(0, int(parts['labels'].max(initial=0)) + 1
                                        - len(is_thing))))
    for i in range(len(parts['keep'])):
        def redo(kept, i=i):
            k = np.zeros_like(parts['keep'][i:i + 1])
            k[0, kept] = True
            return np.asarray(_mask_argmax(pred_masks[i:i + 1], k,
                                           np.asarray(sizes[i:i + 1], np.int32)))[0]
        results.append(_merge_segments(parts['winners'][i], np.flatnonzero(parts['keep'][i]),
                                       parts['labels'][i], sizes[i], orig_sizes[i], is_thing,
                                       label_map, redo))
    return results


def _merge_segments(winners, kept, labels, size, orig_size, is_thing, label_map, redo):
    """One image's host part of `panoptic`: `winners` [H, W] query indices
    on the canvas, `kept` the kept query indices (ascending), `redo(kept)`
    the argmax again over fewer queries."""
    h, w = int(size[0]), int(size[1])
    out_hw = (int(orig_size[0]), int(orig_size[1]))
    classes = labels[kept]

    def ids_and_areas(winners, kept, merge_stuff):
        if len(kept) == 0:
            return np.zeros(out_hw, np.int64), np.zeros(0, np.int64)
        rank = np.zeros(len(labels), np.int64)
        rank[kept] = np.arange(len(kept))
        ids = rank[winners[:h, :w]]
        if merge_stuff:
            for c in np.unique(classes[~is_thing[classes]]):
                same = np.flatnonzero(classes == c)
                if len(same) > 1:
                    ids[np.isin(ids, same)] = same[0]
        ids = resize_ids(ids, out_hw)
        return ids, np.bincount(ids.ravel(), minlength=len(kept))[:len(kept)]

    ids, area = ids_and_areas(winners, kept, merge_stuff=True)
    while len(kept) and (area <= MIN_SEGMENT_AREA).any():
        big = area > MIN_SEGMENT_AREA
        kept, classes = kept[big], classes[big]
        ids, area = ids_and_areas(redo(kept) if len(kept) else None, kept, merge_stuff=False)
    segments = []
    for k, (c, a) in enumerate(zip(classes, area)):
        c = int(c)
        segments.append({'id': k + 1, 'label': c,
                         'category_id': int(label_map.get(c, {}).get('id', c)) if label_map
                         else c,
                         'isthing': bool(is_thing[c]), 'area': int(a)})
    # ids + 1: the original's ids, with 0 left for void (nothing kept)
    return {'ids': (ids + 1 if len(kept) else ids).astype(np.int32), 'segments_info': segments}
