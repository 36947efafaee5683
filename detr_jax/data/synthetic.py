"""The built-in synthetic detection / panoptic set (no download).

Procedural and deterministic from (seed, split, index): textured, cluttered
backgrounds; "sky" and "ground" stuff regions with wavy borders; 0 to
`max_objects` objects of six classes that differ in shape and colour (with
hue, brightness and size jitter, outlines and partial occlusion), and
grey streaks of clutter that belong to no class. Every annotated object has its
visible instance mask; boxes are the visible extent, as in COCO.

`write_coco(root, ...)` exports a split as a COCO-format folder: images,
`instances_{split}.json` (RLE masks) and the panoptic form
(`panoptic_{split}/*.png` + `panoptic_{split}.json`), so pycocotools and PQ
can score it and the COCO-format reader loads it like users' own data.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

from detr_jax.panoptic_format import id2rgb
from detr_jax.paths import as_path, is_uri

# Bumped whenever rendering changes: cached exports are keyed by it.
VERSION = 2

# (name, base RGB); things are category ids 1..6, stuff 7..8
THINGS = (('disc', (220, 50, 50)), ('square', (40, 90, 220)), ('triangle', (40, 170, 60)),
          ('cross', (230, 200, 40)), ('ring', (190, 60, 200)), ('diamond', (40, 200, 210)))
STUFF = (('sky', (150, 180, 215)), ('ground', (120, 95, 60)))


def categories(panoptic=False):
    cats = [{'id': i + 1, 'name': n, 'isthing': 1, 'supercategory': 'shape',
             'color': list(c)} for i, (n, c) in enumerate(THINGS)]
    if panoptic:
        cats += [{'id': len(THINGS) + i + 1, 'name': n, 'isthing': 0, 'supercategory': 'stuff',
                  'color': list(c)} for i, (n, c) in enumerate(STUFF)]
    return cats


def _shape_mask(kind, h, w, cy, cx, r, rng):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    if kind == 'disc':
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == 'square':
        ang = rng.uniform(-0.3, 0.3)
        u, v = dx * np.cos(ang) + dy * np.sin(ang), -dx * np.sin(ang) + dy * np.cos(ang)
        return (np.abs(u) <= r * 0.85) & (np.abs(v) <= r * 0.85)
    if kind == 'triangle':
        return (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if kind == 'cross':
        t = r * 0.33
        return ((np.abs(dx) <= t) & (np.abs(dy) <= r)) | ((np.abs(dy) <= t) & (np.abs(dx) <= r))
    if kind == 'ring':
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    if kind == 'diamond':
        return np.abs(dx) + np.abs(dy) * 0.8 <= r
    raise ValueError(kind)


def _texture(h, w, rng, base, strength):
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    # (broadcast rows and columns: the same values as a full mgrid, cheaper)
    yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    kind = rng.integers(0, 3)
    if kind == 0:  # stripes
        f, a = rng.uniform(0.05, 0.4), rng.uniform(0, np.pi)
        img += strength * np.sin(f * (xx * np.cos(a) + yy * np.sin(a)))[..., None]
    elif kind == 1:  # checker
        s = rng.integers(4, 16)
        img += strength * (((yy // s + xx // s) % 2) * 2 - 1)[..., None]
    img += rng.normal(0, strength * 0.5, size=(h, w, 1))
    return img


def render(seed, split, index, min_size=96, max_size=160, max_objects=8):
    """One example: (image uint8 [H, W, 3], objects [(category_id, mask)],
    stuff map int [H, W] with 0 = none or a stuff category id)."""
    split_code = {'train': 0, 'validation': 1, 'val': 1, 'test': 2}.get(split, 3)
    rng = np.random.default_rng([seed, split_code, index])
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    img = _texture(h, w, rng, rng.uniform(60, 200, size=3), rng.uniform(5, 25))
    stuff = np.zeros((h, w), np.int32)
    xx = np.arange(w, dtype=np.float32)
    for k, (name, color) in enumerate(STUFF):
        if rng.random() < 0.55:
            frac = rng.uniform(0.15, 0.4)
            wave = rng.uniform(1, 6) * np.sin(xx * rng.uniform(0.03, 0.15) + rng.uniform(0, 6))
            border = (frac * h + wave).astype(np.int32)
            yy = np.arange(h)[:, None]
            region = yy < border[None] if name == 'sky' else yy >= h - border[None]
            region &= stuff == 0
            tex = _texture(h, w, rng, np.array(color) + rng.normal(0, 12, 3), rng.uniform(4, 12))
            img[region] = tex[region]
            stuff[region] = len(THINGS) + k + 1
    # distractors: elongated grey-ish streaks, no class (and no class's shape
    # or hue, so that they are clutter, not unlabelled objects)
    for _ in range(rng.integers(0, 4)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b, ang = rng.uniform(6, 16), rng.uniform(1.5, 3), rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
        v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
        m = (u / a) ** 2 + (v / b) ** 2 <= 1
        img[m] = rng.uniform(40, 220) + rng.normal(0, 10, 3)
    n = 0 if rng.random() < 0.08 else int(rng.integers(1, max_objects + 1))
    objects, occupied = [], np.zeros((h, w), bool)
    for _ in range(n):
        cls = int(rng.integers(len(THINGS)))
        kind, color = THINGS[cls]
        for _try in range(6):
            r = rng.uniform(0.06, 0.22) * min(h, w)
            cy, cx = rng.uniform(r * 0.5, h - r * 0.5), rng.uniform(r * 0.5, w - r * 0.5)
            m = _shape_mask(kind, h, w, cy, cx, r, rng)
            area = m.sum()
            if area >= 30 and (m & occupied).sum() <= 0.4 * area:
                break
        else:
            continue
        # the new object is drawn on top: earlier masks lose what it covers
        objects = [(c, om & ~m) for c, om in objects]
        col = np.clip(np.array(color) * rng.uniform(0.7, 1.15) + rng.normal(0, 18, 3), 0, 255)
        tex = _texture(h, w, rng, col, rng.uniform(0, 15))
        img[m] = tex[m]
        if rng.random() < 0.5:  # darker outline
            edge = m & ~_shape_mask(kind, h, w, cy, cx, r - 1.5, rng) if kind != 'square' else m
            img[edge] *= 0.6
        objects.append((cls + 1, m))
        occupied |= m
    objects = [(c, m) for c, m in objects if m.sum() >= 12]
    return np.clip(img, 0, 255).astype(np.uint8), objects, stuff


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def _export_one(tmp, split, i, seed, min_size, max_size, max_objects):
    """Renders and writes image `i` (and its panoptic PNG) into `tmp`;
    returns its image entry, annotations (without ids) and panoptic segments."""
    from pycocotools import mask as mask_utils
    img, objects, stuff = render(seed, split, i, min_size, max_size, max_objects)
    h, w = img.shape[:2]
    image_id = i + 1
    fname = f'{image_id:06d}.png'
    # lossless either way; level 1 encodes the noisy textures ~3x faster
    Image.fromarray(img).save(os.path.join(tmp, 'images', fname), compress_level=1)
    seg_map, segments, anns = np.zeros((h, w), np.int64), [], []
    for k, (cat, m) in enumerate(objects):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        rle['counts'] = rle['counts'].decode('ascii')
        anns.append({'image_id': image_id, 'category_id': cat, 'bbox': _bbox(m),
                     'area': float(m.sum()), 'iscrowd': 0, 'segmentation': rle})
        seg_map[m] = k + 1
        segments.append({'id': k + 1, 'category_id': cat, 'iscrowd': 0,
                         'bbox': _bbox(m), 'area': int(m.sum())})
    for cat in np.unique(stuff[stuff > 0]):
        m = (stuff == cat) & (seg_map == 0)
        if m.sum() == 0:
            continue
        sid = len(segments) + 1
        seg_map[m] = sid
        segments.append({'id': sid, 'category_id': int(cat), 'iscrowd': 0,
                         'bbox': _bbox(m), 'area': int(m.sum())})
    Image.fromarray(id2rgb(seg_map)).save(os.path.join(tmp, f'panoptic_{split}', fname),
                                           compress_level=1)
    image = {'id': image_id, 'file_name': fname, 'height': h, 'width': w}
    return image, anns, {'image_id': image_id, 'file_name': fname, 'segments_info': segments}


def _export_range(tmp, split, start, stop, seed, min_size, max_size, max_objects,
                  progress=None, total=None):
    out = []
    for i in range(start, stop):
        out.append(_export_one(tmp, split, i, seed, min_size, max_size, max_objects))
        if progress and (i + 1) % 200 == 0:
            progress(i + 1, total)
    return out


def write_coco(root, split, num_images, seed=0, min_size=96, max_size=160, max_objects=8,
               progress=None, workers=None):
    """Writes the split as a COCO-format folder under `root` (atomically:
    an interrupted run leaves nothing half-written). Returns the paths.

    `workers` (default: one per CPU core, up to 4; 1 for small splits): the
    last images are rendered by `workers - 1` helper processes (fresh
    interpreters, so the caller's threads and __main__ are not involved).
    The output does not depend on it.

    `root` may be a bucket (`gs://...`): the split is written in a local
    temporary folder and copied there, its DONE marker last (hosts that
    write it at once write the same bytes).
    """
    if is_uri(root):
        return _write_coco_to_bucket(root, split, num_images, seed, min_size, max_size,
                                     max_objects, progress, workers)
    final = os.path.join(root, split)
    if os.path.exists(os.path.join(final, 'DONE')):
        return _paths(final, split)
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{split}-', dir=root)
    os.makedirs(os.path.join(tmp, 'images'))
    os.makedirs(os.path.join(tmp, f'panoptic_{split}'))
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if num_images >= 256 else 1
    bounds = np.linspace(0, num_images, max(1, workers) + 1).astype(int)
    helpers = []
    for k in range(1, len(bounds) - 1):
        part = os.path.join(tmp, f'part{k}.json')
        args = [tmp, split, bounds[k], bounds[k + 1], seed, min_size, max_size, max_objects, part]
        helpers.append((part, subprocess.Popen(
            [sys.executable, '-m', 'detr_jax.data.synthetic', *map(str, args)])))
    try:
        results = _export_range(tmp, split, 0, bounds[1], seed, min_size, max_size, max_objects,
                                progress, num_images)
        for part, proc in helpers:
            if proc.wait() != 0:
                raise RuntimeError(f'synthetic {split}: the helper process writing {part} '
                                   f'failed (exit code {proc.returncode})')
            with open(part) as f:
                results += [tuple(r) for r in json.load(f)]
            os.remove(part)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-written folder left behind
        raise
    finally:
        for _, proc in helpers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if progress and helpers:  # the helpers' share is done too
        progress(num_images, num_images)
    images, anns, pan_anns = [], [], []
    for image, image_anns, pan in results:
        images.append(image)
        for a in image_anns:
            anns.append({'id': len(anns) + 1, **a})
        pan_anns.append(pan)
    with open(os.path.join(tmp, f'instances_{split}.json'), 'w') as f:
        json.dump({'images': images, 'annotations': anns, 'categories': categories()}, f)
    with open(os.path.join(tmp, f'panoptic_{split}.json'), 'w') as f:
        json.dump({'images': images, 'annotations': pan_anns,
                   'categories': categories(panoptic=True)}, f)
    open(os.path.join(tmp, 'DONE'), 'w').close()
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    return _paths(final, split)


def _write_coco_to_bucket(root, split, *args):
    final = as_path(f'{root}/{split}')
    if not (final / 'DONE').exists():
        local = tempfile.mkdtemp(prefix=f'detr_jax_synthetic_{split}_')
        try:
            folder = pathlib.Path(write_coco(local, split, *args)['images']).parent
            files = sorted(p for p in folder.rglob('*') if p.is_file() and p.name != 'DONE')
            for p in files + [folder / 'DONE']:
                dst = final / p.relative_to(folder).as_posix()
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(p.read_bytes())
        finally:
            shutil.rmtree(local, ignore_errors=True)
    return _paths(f'{root}/{split}', split)


def _paths(folder, split):
    return {'images': os.path.join(folder, 'images'),
            'instances': os.path.join(folder, f'instances_{split}.json'),
            'panoptic_json': os.path.join(folder, f'panoptic_{split}.json'),
            'panoptic_png': os.path.join(folder, f'panoptic_{split}')}


if __name__ == '__main__':  # a write_coco helper: TMP SPLIT START STOP SEED MIN MAX OBJ OUT
    a = sys.argv[1:]
    part = _export_range(a[0], a[1], *map(int, a[2:8]))
    with open(a[8] + '.tmp', 'w') as f:
        json.dump(part, f)
    os.replace(a[8] + '.tmp', a[8])
