"""Single-image / folder inference: boxes, names and scores on pictures;
panoptic checkpoints also give segments (COCO's panoptic PNG + json and a
coloured overlay)."""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps

from detr_jax import checkpoints, draw
from detr_jax.data.normalize import normalize
from detr_jax.data.transforms import get_size_with_aspect_ratio
from detr_jax.models import build_model
from detr_jax.panoptic_format import write_ids
from detr_jax.paths import as_path, write_json, write_png
from detr_jax.postprocess import detections, is_thing_per_class, panoptic, select


def load_any(path):
    """(model_config, variables, label_map, eval sizes) from a training
    workdir, a converted folder, an official .pth or a HF checkpoint."""
    if checkpoints.is_workdir(path):
        config, variables, _ = checkpoints.load_workdir(path)
        lm = {int(k): v for k, v in config.model.label_map.items()}
        return config.model, variables, lm, (config.data.eval_size, config.data.eval_max_size)
    from detr_jax.convert import load_checkpoint
    cfg, variables = load_checkpoint(path)
    lm = {int(k): dict(v) for k, v in cfg.get('label_map', {}).items()}
    return cfg, variables, lm, (800, 1333)


def prepare(image, size, max_size):
    """uint8 HWC image -> (images [1, H, W, 3] uint8 padded to 32, mask, (h, w))."""
    h0, w0 = image.shape[:2]
    h, w = get_size_with_aspect_ratio(h0, w0, size, max_size)
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    H, W = -(-h // 32) * 32, -(-w // 32) * 32
    out = np.zeros((1, H, W, 3), np.uint8)
    out[0, :h, :w] = img
    mask = np.zeros((1, H, W), bool)
    mask[0, :h, :w] = True
    return out, mask, (h, w)


def predict_images(model_cfg, variables, paths, size, max_size, threshold=0.5,
                   label_map=None, panoptic_threshold=0.85):
    """[(path, image, detections)] for each image path; a panoptic model's
    detections also hold `panoptic` (`postprocess.panoptic`'s segments at
    the image's size, queries kept above `panoptic_threshold`)."""
    model = build_model(model_cfg)
    apply = jax.jit(lambda v, x, m: model.apply(v, normalize(x, m), m))
    is_thing = None
    if model_cfg.get('masks'):
        is_thing = is_thing_per_class(label_map, model_cfg.num_classes, unmapped=True)
    results = []
    for p in paths:
        with Image.open(p) as im:
            image = np.asarray(ImageOps.exif_transpose(im).convert('RGB'))
        x, m, hw = prepare(image, size, max_size)
        out = apply(variables, jnp.asarray(x), jnp.asarray(m))
        orig = np.array([image.shape[:2]])
        dets = select(jax.device_get(detections(out, jnp.asarray(orig))), threshold)[0]
        if is_thing is not None:
            dets['panoptic'] = panoptic(out, np.array([hw]), orig, is_thing, panoptic_threshold,
                                        label_map)[0]
        results.append((p, image, dets))
    return results


def cli(argv):
    ap = argparse.ArgumentParser(prog='detr-jax predict')
    ap.add_argument('images', nargs='+', help='image files or folders')
    ap.add_argument('--checkpoint', required=True)
    ap.add_argument('--out', default='predictions')
    ap.add_argument('--threshold', type=float, default=0.5)
    ap.add_argument('--panoptic_threshold', type=float, default=0.85,
                    help='panoptic checkpoints: the score a query needs to make a segment')
    a = ap.parse_args(argv)
    paths = []
    for p in a.images:
        if os.path.isdir(p):
            paths += sorted(os.path.join(p, f) for f in os.listdir(p)
                            if f.lower().endswith(('.jpg', '.jpeg', '.png', '.bmp', '.webp')))
        elif os.path.exists(p):
            paths.append(p)
        else:
            print(f'detr-jax predict: {p}: no such file', file=sys.stderr)
            return 1
    cfg, variables, label_map, (size, max_size) = load_any(a.checkpoint)
    out = as_path(a.out)
    annotations = []
    for p, image, d in predict_images(cfg, variables, paths, size, max_size, a.threshold,
                                      label_map, a.panoptic_threshold):
        pic = draw.draw_boxes(image, d['boxes'], d['labels'], d['scores'], label_map)
        stem = os.path.splitext(os.path.basename(p))[0]
        if 'panoptic' in d:
            seg = d['panoptic']
            pic = draw.grid([pic, draw.draw_panoptic(image, seg['ids'], seg['segments_info'],
                                                     label_map)], cols=2)
            write_ids(out / 'panoptic' / f'{stem}.png', seg['ids'])
            # COCO's panoptic format; image ids: the files' order
            annotations.append({'image_id': len(annotations), 'file_name': f'{stem}.png',
                                'image': p, 'segments_info': seg['segments_info']})
        dst = out / (stem + '_pred.png')
        write_png(dst, pic)
        print(f'{p}: {len(d["scores"])} detections -> {dst}')
        if 'panoptic' in d:
            names = [label_map.get(s['label'], {}).get('name', str(s['category_id']))
                     for s in d['panoptic']['segments_info']]
            print(f'  {len(names)} segments: {", ".join(names)}')
        for s, l, b in zip(d['scores'], d['labels'], d['boxes']):
            name = label_map.get(int(l), {}).get('name', str(int(l)))
            print(f'  {name:>12s} {s:.2f}  [{", ".join(f"{v:.0f}" for v in b)}]')
    if annotations:
        write_json(out / 'panoptic.json', {'annotations': annotations})
        print(f'segments in COCO\'s panoptic format: {out / "panoptic.json"}, {out / "panoptic"}/')
    return 0
