"""COCO-format datasets (instances json + images; panoptic json + PNGs) as
an indexable `Source` the pipeline plans over without decoding images.

Category ids may be anything (non-contiguous, starting anywhere): classes
get contiguous indices in id order and the `label_map` records the ids, so
predictions are written back with the dataset's own ids. Crowd objects are
dropped from training targets (they stay in the json for evaluation);
images without objects are kept. A malformed annotation is an error naming
the file and annotation id, or, with `on_bad_input='skip'`, dropped and
counted in `Source.skipped`.
"""
import collections
import dataclasses
import json
import math
import os
from typing import Callable, Dict, List, Optional

import numpy as np


class DataError(ValueError):
    """Bad input data: names the file and the annotation or image."""


@dataclasses.dataclass
class Source:
    name: str
    image_paths: List[str]
    image_ids: np.ndarray            # [N] int64, the dataset's own ids
    sizes: np.ndarray                # [N, 2] (h, w) of the stored image
    boxes: List[np.ndarray]          # per image [n, 4] xyxy pixels, float32
    labels: List[np.ndarray]         # per image [n] int32 class indices
    label_map: Dict[int, dict]       # class index -> {id, name, isthing}
    ann_file: Optional[str] = None   # ground truth json for COCO evaluation
    panoptic_pngs: Optional[List[str]] = None   # per image segment-id PNG
    segment_ids: Optional[List[np.ndarray]] = None  # per image [n], aligned with boxes
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Sources without files (TFDS): reader(reader_index[i]) -> (image, panoptic
    # image or None), each encoded bytes or a decoded array; image_paths then
    # only name the examples in messages.
    reader: Optional[Callable] = None
    reader_index: Optional[np.ndarray] = None

    # the fields that hold one entry per image, in image order
    PER_IMAGE = ('image_paths', 'image_ids', 'sizes', 'boxes', 'labels', 'panoptic_pngs',
                 'segment_ids', 'reader_index')

    def __len__(self):
        return len(self.image_paths)

    def head(self, n):
        """The same source cut to its first `n` images (every per-image field)."""
        return dataclasses.replace(self, **{k: getattr(self, k)[:n] for k in self.PER_IMAGE
                                            if getattr(self, k) is not None})

    @property
    def num_classes(self):
        """Classifier outputs the labels need (indices may be sparse: COCO ids)."""
        return max(self.label_map) + 1 if self.label_map else 0


def _load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise DataError(f'{path}: annotation file not found') from e
    except json.JSONDecodeError as e:
        raise DataError(f'{path}: not valid JSON: {e}') from e


def _bbox_problem(bbox, w, h):
    """'' if a COCO [x, y, w, h] box is usable for image w x h, else why."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f'bbox {bbox!r} is not [x, y, w, h]'
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
        return f'bbox {bbox!r} has a non-finite value'
    x, y, bw, bh = bbox
    if bw < 0 or bh < 0:
        return f'bbox {bbox!r} has a negative size'
    if x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
        return f'bbox {bbox!r} lies outside the {w}x{h} image'
    return ''


def _index(data, ann_file, by_category_id=False):
    if 'images' not in data or 'categories' not in data:
        raise DataError(f'{ann_file}: a COCO json needs "images" and "categories"')
    images, seen = [], set()
    for im in data['images']:
        if im['id'] in seen:
            raise DataError(f'{ann_file}: duplicate image id {im["id"]}')
        seen.add(im['id'])
        images.append(im)
    cats = sorted(data['categories'], key=lambda c: c['id'])
    if by_category_id and cats and (not all(isinstance(c['id'], int) for c in cats)
                                    or cats[0]['id'] < 0):
        raise DataError(f'{ann_file}: class_index=category_id needs non-negative integer '
                        'category ids')
    label_map = {int(c['id']) if by_category_id else i:
                 {'id': int(c['id']), 'name': c.get('name', str(c['id'])),
                  'isthing': bool(c.get('isthing', 1))} for i, c in enumerate(cats)}
    return images, label_map


def load_instances(ann_file, image_dir, on_bad_input='error', name=None, by_category_id=False):
    """A COCO instances json + image folder -> Source. Class indices are
    contiguous in id order, or with `by_category_id` the category ids
    themselves (the original's layout for COCO: 91 classes)."""
    data = _load_json(ann_file)
    images, label_map = _index(data, ann_file, by_category_id)
    cat_to_idx = {v['id']: k for k, v in label_map.items()}
    by_image = collections.defaultdict(list)
    skipped = collections.Counter()
    sizes = {im['id']: (im['height'], im['width']) for im in images}
    seen_ann = set()

    def bad(ann, why):
        if on_bad_input == 'skip':
            skipped[why.split(' ')[0] if why.startswith('bbox') else why] += 1
            return
        raise DataError(f'{ann_file}: annotation id {ann.get("id")} (image {ann.get("image_id")}): {why}')

    for ann in data.get('annotations', []):
        if ann.get('id') in seen_ann:
            bad(ann, f'duplicate annotation id {ann.get("id")}')
            continue
        seen_ann.add(ann.get('id'))
        if ann.get('image_id') not in sizes:
            bad(ann, 'refers to an unknown image id')
            continue
        if ann.get('category_id') not in cat_to_idx:
            bad(ann, f'unknown category id {ann.get("category_id")}')
            continue
        h, w = sizes[ann['image_id']]
        why = _bbox_problem(ann.get('bbox'), w, h)
        if why:
            bad(ann, why)
            continue
        if ann.get('iscrowd', 0):
            continue  # kept in the json for evaluation, not a training target
        by_image[ann['image_id']].append(ann)
    paths, ids, hw, boxes, labels = [], [], [], [], []
    for im in images:
        anns = by_image.get(im['id'], [])
        b = np.array([a['bbox'] for a in anns], np.float32).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        b[:, 0::2] = b[:, 0::2].clip(0, im['width'])
        b[:, 1::2] = b[:, 1::2].clip(0, im['height'])
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        paths.append(os.path.join(image_dir, im['file_name']))
        ids.append(im['id'])
        hw.append((im['height'], im['width']))
        boxes.append(b[keep])
        labels.append(np.array([cat_to_idx[a['category_id']] for a in anns], np.int32)[keep])
    return Source(name or os.path.basename(ann_file), paths, np.array(ids, np.int64),
                  np.array(hw, np.int32).reshape(-1, 2), boxes, labels, label_map,
                  ann_file=ann_file, skipped=skipped)


def load_panoptic(ann_file, image_dir, png_dir, on_bad_input='error', name=None,
                  by_category_id=False):
    """A COCO panoptic json + images + segment PNGs -> Source with masks.

    Things and stuff both become targets (the original's panoptic
    training); crowd segments are dropped from targets.
    """
    data = _load_json(ann_file)
    images, label_map = _index(data, ann_file, by_category_id)
    cat_to_idx = {v['id']: k for k, v in label_map.items()}
    anns = {a['image_id']: a for a in data.get('annotations', [])}
    skipped = collections.Counter()
    out = dict(paths=[], ids=[], hw=[], boxes=[], labels=[], pngs=[], segs=[])
    for im in images:
        a = anns.get(im['id'], {'segments_info': [], 'file_name': None})
        b, lab, sid = [], [], []
        for s in a['segments_info']:
            if s.get('category_id') not in cat_to_idx:
                if on_bad_input == 'skip':
                    skipped['unknown category id'] += 1
                    continue
                raise DataError(f'{ann_file}: segment {s.get("id")} (image {im["id"]}): '
                                f'unknown category id {s.get("category_id")}')
            if s.get('iscrowd', 0):
                continue
            x, y, w, h = s['bbox']
            b.append([x, y, x + w, y + h])
            lab.append(cat_to_idx[s['category_id']])
            sid.append(s['id'])
        out['paths'].append(os.path.join(image_dir, im['file_name']))
        out['ids'].append(im['id'])
        out['hw'].append((im['height'], im['width']))
        out['boxes'].append(np.array(b, np.float32).reshape(-1, 4))
        out['labels'].append(np.array(lab, np.int32))
        out['pngs'].append(os.path.join(png_dir, a['file_name']) if a['file_name'] else None)
        out['segs'].append(np.array(sid, np.int64))
    return Source(name or os.path.basename(ann_file), out['paths'], np.array(out['ids'], np.int64),
                  np.array(out['hw'], np.int32).reshape(-1, 2), out['boxes'], out['labels'],
                  label_map, panoptic_pngs=out['pngs'], segment_ids=out['segs'],
                  skipped=skipped)
