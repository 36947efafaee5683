"""Pictures: predicted (and ground-truth) boxes with names and scores;
panoptic segments as a coloured overlay with their names."""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# a legible, colour-blind-aware palette (Okabe-Ito + extras)
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
           (213, 94, 0), (204, 121, 167), (255, 255, 255), (120, 200, 80), (180, 120, 255))


def draw_boxes(image, boxes, labels, scores=None, label_map=None, gt_boxes=None, scale=1):
    """image uint8 [H, W, 3]; boxes [N, 4] xyxy pixels -> uint8 picture.

    Labels read "name 0.87"; text is kept inside the image. Ground-truth
    boxes, if given, are drawn thin and white underneath.
    """
    img = Image.fromarray(np.asarray(image, np.uint8))
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    w, h = img.size
    for b in (gt_boxes if gt_boxes is not None else []):
        draw.rectangle([float(v) * scale for v in b], outline=(255, 255, 255), width=1)
    for i, b in enumerate(np.asarray(boxes).reshape(-1, 4)):
        lab = int(labels[i])
        color = PALETTE[lab % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) * scale for v in b)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=2)
        name = label_map[lab]['name'] if label_map and lab in label_map else str(lab)
        text = name if scores is None else f'{name} {float(scores[i]):.2f}'
        tw, th = draw.textbbox((0, 0), text, font=font)[2:]
        tx = min(max(x0, 0), max(w - tw - 2, 0))
        ty = y0 - th - 2 if y0 - th - 2 >= 0 else min(y0 + 2, max(h - th - 2, 0))
        draw.rectangle([tx, ty, tx + tw + 2, ty + th + 1], fill=color)
        draw.text((tx + 1, ty), text, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def grid(images, cols=4, pad=4):
    """Tiles uint8 images of different sizes into one picture."""
    rows = [images[i:i + cols] for i in range(0, len(images), cols)]
    hs = [max(im.shape[0] for im in r) for r in rows]
    wmax = max(sum(im.shape[1] for im in r) + pad * (len(r) - 1) for r in rows)
    out = np.full((sum(hs) + pad * (len(rows) - 1), wmax, 3), 255, np.uint8)
    y = 0
    for r, rh in zip(rows, hs):
        x = 0
        for im in r:
            out[y:y + im.shape[0], x:x + im.shape[1]] = im
            x += im.shape[1] + pad
        y += rh + pad
    return out


def segment_color(segment):
    """A colour per segment: things by segment id (neighbours differ),
    stuff by category (one colour per kind of stuff)."""
    key = segment['id'] if segment.get('isthing') else segment['category_id'] * 7 + 3
    return PALETTE[key % len(PALETTE)]


def draw_panoptic(image, ids, segments_info, label_map=None, alpha=0.55, scale=1):
    """image uint8 [H, W, 3]; `ids` [H, W] segment ids (0 = void, left as
    is); `segments_info` [{'id', 'category_id', 'isthing', 'label'?}] ->
    uint8 picture: each segment tinted, its outline darkened and its name
    written at its centre (things) or on its largest row (stuff)."""
    img = np.asarray(image, np.float32).copy()
    ids = np.asarray(ids)
    if scale != 1:
        img = img.repeat(scale, 0).repeat(scale, 1)
        ids = ids.repeat(scale, 0).repeat(scale, 1)
    edge = np.zeros(ids.shape, bool)
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    for s in segments_info:
        m = ids == s['id']
        img[m] = (1 - alpha) * img[m] + alpha * np.array(segment_color(s), np.float32)
    img[edge] *= 0.3
    pic = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    font = ImageFont.load_default()
    for s in segments_info:
        ys, xs = np.nonzero(ids == s['id'])
        if not len(ys):
            continue
        lab = s.get('label', s['category_id'])
        name = (label_map[lab]['name'] if label_map and lab in label_map
                else str(s['category_id']))
        tw, th = draw.textbbox((0, 0), name, font=font)[2:]
        cx, cy = int(np.median(xs)), int(np.median(ys))
        tx = min(max(cx - tw // 2, 0), max(pic.width - tw - 2, 0))
        ty = min(max(cy - th // 2, 0), max(pic.height - th - 2, 0))
        draw.rectangle([tx, ty, tx + tw + 2, ty + th + 1], fill=segment_color(s))
        draw.text((tx + 1, ty), name, fill=(0, 0, 0), font=font)
    return np.asarray(pic)


def draw_eval_samples(samples, label_map, threshold=0.5, max_images=8, scale=2):
    """Pictures of predictions (score > threshold) on eval batches, in the
    resized image (what the model saw), ground truth in white; with
    panoptic segments (`dets['panoptic']`), the segments' overlay beside
    the boxes."""
    from detr_jax.panoptic_format import resize_ids
    pics = []
    for batch, dets in samples:
        for i in range(len(batch['image_id'])):
            if batch['image_id'][i] < 0 or len(pics) >= max_images:
                continue
            h, w = batch['size'][i]
            oh, ow = batch['orig_size'][i]
            segments = dets['panoptic'][i] if 'panoptic' in dets else None
            if segments is not None:
                pics.append(draw_panoptic(batch['images'][i][:h, :w],
                                          resize_ids(segments['ids'], (h, w)),
                                          segments['segments_info'], label_map, scale=scale))
            s = np.array([w / ow, h / oh, w / ow, h / oh])
            keep = dets['scores'][i] > threshold
            gt = batch['boxes'][i][batch['valid'][i]] * np.array([w, h, w, h])
            gt = np.concatenate([gt[:, :2] - gt[:, 2:] / 2, gt[:, :2] + gt[:, 2:] / 2], -1)
            pics.append(draw_boxes(batch['images'][i][:h, :w], dets['boxes'][i][keep] * s,
                                   dets['labels'][i][keep], dets['scores'][i][keep], label_map,
                                   gt_boxes=gt, scale=scale))
    return grid(pics) if pics else None


# --- attention maps (the original's Colab) ----------------------------------------

# dark blue -> teal -> yellow, sampled at 5 stops (viridis-like)
_HEAT = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
                 np.float32)


def heat_colors(values):
    """values in [0, 1] (any shape) -> uint8 RGB [..., 3] on a viridis-like scale."""
    v = np.clip(np.asarray(values, np.float32), 0, 1) * (len(_HEAT) - 1)
    i = np.minimum(v.astype(np.int32), len(_HEAT) - 2)
    t = (v - i)[..., None]
    return ((1 - t) * _HEAT[i] + t * _HEAT[i + 1]).astype(np.uint8)


def attention_on_image(image, cells, result, alpha=0.6):
    """A map over the feature cells `cells` [fh, fw] (an `inference`
    result's `decoder_attention[k]` or `encoder_attention[y, x]`) stretched
    over the image it covers (cell = `feature_stride` pixels of the resized
    image) and blended onto the image's grey -> uint8 [h0, w0, 3]."""
    h0, w0 = result['image_size']
    h, w = result['input_size']
    stride = result['feature_stride']
    fh, fw = cells.shape
    m = np.asarray(cells, np.float32)
    m = m / max(float(m.max()), 1e-12)
    # the cells span fh * stride x fw * stride resized pixels; crop to the image
    big = Image.fromarray((m * 255).astype(np.uint8)).resize(
        (round(fw * stride * w0 / w), round(fh * stride * h0 / h)), Image.BILINEAR)
    heat = heat_colors(np.asarray(big, np.float32)[:h0, :w0] / 255)
    grey = np.asarray(image, np.float32).mean(-1, keepdims=True)
    return (alpha * heat + (1 - alpha) * grey).astype(np.uint8)


def cell_of(result, x, y):
    """The feature cell (row, col) holding original-image pixel (x, y)."""
    h0, w0 = result['image_size']
    h, w = result['input_size']
    s = result['feature_stride']
    fh, fw = result['encoder_attention'].shape[:2]
    return min(int(y * h / h0) // s, fh - 1), min(int(x * w / w0) // s, fw - 1)


def draw_attention(image, result, label_map=None, max_queries=4, points=()):
    """The original Colab's pictures for one `Predictor` result made with
    `return_attention=True`: the boxes, then for each of the best
    `max_queries` detections its query's decoder cross-attention with its
    box, then for each (x, y) in `points` (original pixels) the encoder's
    self-attention at that pixel, marked with a cross -> uint8 picture."""
    pics = [draw_boxes(image, result['boxes'][:max_queries], result['labels'][:max_queries],
                       result['scores'][:max_queries], label_map)]
    for k in range(min(max_queries, len(result['scores']))):
        pics.append(draw_boxes(attention_on_image(image, result['decoder_attention'][k], result),
                               result['boxes'][k:k + 1], result['labels'][k:k + 1],
                               result['scores'][k:k + 1], label_map))
    for x, y in points:
        r, c = cell_of(result, x, y)
        pic = Image.fromarray(attention_on_image(image, result['encoder_attention'][r, c],
                                                 result))
        d = ImageDraw.Draw(pic)
        d.line([x - 6, y, x + 6, y], fill=(255, 0, 0), width=2)
        d.line([x, y - 6, x, y + 6], fill=(255, 0, 0), width=2)
        pics.append(np.asarray(pic))
    return grid(pics, cols=min(len(pics), 3))
