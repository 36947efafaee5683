"""Model outputs -> detections in original-image pixels (the original's
PostProcess), plus a score threshold / top-k for users."""
import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.box_ops import box_cxcywh_to_xyxy


def detections(outputs, orig_sizes):
    """`scores`, `labels` [B, Q] (best real class per query, no-object
    dropped) and `boxes` [B, Q, 4] xyxy in pixels of `orig_sizes` [B, 2]
    (h, w)."""
    prob = jax.nn.softmax(outputs['pred_logits'].astype(jnp.float32), -1)[..., :-1]
    scores, labels = prob.max(-1), prob.argmax(-1)
    h, w = orig_sizes[:, 0].astype(jnp.float32), orig_sizes[:, 1].astype(jnp.float32)
    scale = jnp.stack([w, h, w, h], -1)[:, None, :]
    return {'scores': scores, 'labels': labels,
            'boxes': box_cxcywh_to_xyxy(outputs['pred_boxes']) * scale}


def select(dets, threshold=0.0, top_k=None):
    """Per image lists of (score, label, box) above `threshold`, best first,
    at most `top_k` (host-side, numpy)."""
    out = []
    for s, l, b in zip(*(np.asarray(dets[k]) for k in ('scores', 'labels', 'boxes'))):
        order = np.argsort(-s)
        order = order[s[order] > threshold][:top_k]
        out.append({'scores': s[order], 'labels': l[order], 'boxes': b[order]})
    return out
