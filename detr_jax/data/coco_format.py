"""COCO-format datasets (instances json + images; panoptic json + PNGs) as
an indexable `Source` the pipeline plans over without decoding images.

Category ids may be anything (non-contiguous, starting anywhere): classes
get contiguous indices in id order and the `label_map` records the ids, so
predictions are written back with the dataset's own ids. Crowd objects are
dropped from training targets (they stay in the json for evaluation);
images without objects are kept. A malformed annotation is an error naming
the file and annotation id, or, with `on_bad_input='skip'`, dropped and
counted in `Source.skipped`. Evaluating a model, the label map stored with
its weights decides the class indices (`label_map=`), so a validation file
that lists its categories differently still gets the right ids.
"""
import collections
import dataclasses
import json
import logging
import math
import os
from typing import Callable, Dict, List, Optional, Union

import numpy as np
from PIL import Image

from detr_jax.paths import as_path


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
    # what pycocotools evaluates against: the cleaned COCO json (a dict), or
    # the path of one (TFDS's, or the official file given as data.val_ann)
    ground_truth: Optional[Union[dict, str]] = None
    panoptic_pngs: Optional[List[str]] = None   # per image segment-id PNG
    # what PQ evaluates against: COCO's panoptic json (`images`,
    # `annotations` with every segment, crowd ones too, `categories`)
    panoptic_ground_truth: Optional[dict] = None
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

    def panoptic_ids(self, i):
        """Image `i`'s ground-truth segment-id map [H, W] int64 (from its
        PNG, or its TFDS example's panoptic image); None if it has none."""
        from detr_jax.panoptic_format import decode_ids, read_ids
        if self.reader is not None:
            return decode_ids(self.reader(int(self.reader_index[i]))[1])
        return read_ids(self.panoptic_pngs[i]) if self.panoptic_pngs[i] else None

    def head(self, n):
        """The same source cut to its first `n` images (every per-image field)."""
        return dataclasses.replace(self, **{k: getattr(self, k)[:n] for k in self.PER_IMAGE
                                            if getattr(self, k) is not None})

    @property
    def num_classes(self):
        """Classifier outputs the labels need (indices may be sparse: COCO ids)."""
        return max(self.label_map) + 1 if self.label_map else 0


def _load_coco_json(path):
    """A COCO json (instances or panoptic): a DataError naming the file if it
    is missing, not JSON, or lacks "images" or "categories"."""
    try:
        with as_path(path).open() as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise DataError(f'{path}: annotation file not found') from e
    except json.JSONDecodeError as e:
        raise DataError(f'{path}: not valid JSON: {e}') from e
    if not isinstance(data, dict) or 'images' not in data or 'categories' not in data:
        raise DataError(f'{path}: a COCO json needs "images" and "categories"')
    return data


def _bbox_problem(bbox, w, h):
    """(why, kind) if a COCO [x, y, w, h] box is not usable for image w x h,
    else ('', '')."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f'bbox {bbox!r} is not [x, y, w, h]', 'bbox not [x, y, w, h]'
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in bbox):
        return f'bbox {bbox!r} has a non-finite or non-numeric value', 'bbox not finite numbers'
    x, y, bw, bh = bbox
    if bw < 0 or bh < 0:
        return f'bbox {bbox!r} has a negative size', 'bbox of negative size'
    if x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
        return f'bbox {bbox!r} lies outside the {w}x{h} image', 'bbox outside the image'
    return '', ''


def _is_size(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _header_size(path):
    """(h, w) of an image file as displayed (EXIF orientation applied), from
    its header: nothing is decoded."""
    with as_path(path).open('rb') as f, Image.open(f) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            w, h = h, w
    return h, w


class _Defects:
    """A defect is a DataError naming the file and the image or annotation
    ('error'), or dropped and counted by kind ('skip'); `notes` counts what
    was filled in or changed the way COCO and the original do (reported,
    never an error)."""

    def __init__(self, ann_file, on_bad_input):
        self.ann_file, self.skip = ann_file, on_bad_input == 'skip'
        self.skipped, self.notes = collections.Counter(), collections.Counter()

    def __call__(self, what, why, kind):
        if not self.skip:
            raise DataError(f'{self.ann_file}: {what}: {why}')
        self.skipped[kind] += 1

    def report(self):
        if self.skipped:
            logging.warning('%s: skipped (on_bad_input=skip): %s', self.ann_file,
                            dict(self.skipped))
        if self.notes:
            logging.warning('%s: %s', self.ann_file,
                            '; '.join(f'{what}: {n}' for what, n in self.notes.items()))


def _images(data, image_dir, defect):
    """The usable image entries (width and height read from the file's
    header where the json has none) and the ids of the dropped ones."""
    images, seen, dropped = [], set(), set()
    for im in data['images']:
        if not isinstance(im, dict) or 'id' not in im or not isinstance(im.get('file_name'), str):
            defect(f'image entry {str(im)[:80]}', 'needs "id" and "file_name"',
                   'image without id or file_name')
            continue
        what = f'image id {im["id"]} ({im["file_name"]})'
        if im['id'] in seen:
            defect(what, 'duplicate image id', 'duplicate image id')
            continue
        seen.add(im['id'])
        im = dict(im)
        if not (_is_size(im.get('height')) and _is_size(im.get('width'))):
            try:
                im['height'], im['width'] = _header_size(os.path.join(image_dir, im['file_name']))
            except (OSError, ValueError, SyntaxError) as e:
                defect(what, f'no width/height in the json and the file cannot tell: {e}',
                       'image size unknown')
                dropped.add(im['id'])
                continue
            defect.notes['images without width/height (read from their files)'] += 1
        images.append(im)
    return images, dropped


def _categories(data, ann_file, by_category_id, label_map):
    """(label_map, category id -> class index). With a `label_map` (the
    model's: evaluation), the file's categories are matched to it by id."""
    cats = data['categories']
    if not isinstance(cats, list) or not all(
            isinstance(c, dict) and isinstance(c.get('id'), int)
            and not isinstance(c.get('id'), bool) for c in cats):
        raise DataError(f'{ann_file}: "categories" must be a list of objects with an integer "id"')
    ids = [c['id'] for c in cats]
    if len(set(ids)) != len(ids):
        raise DataError(f'{ann_file}: duplicate category ids in "categories"')
    if label_map is not None:
        label_map = {int(k): v for k, v in label_map.items()}
        return label_map, {v['id']: k for k, v in label_map.items()}
    cats = sorted(cats, key=lambda c: c['id'])
    if by_category_id and cats and cats[0]['id'] < 0:
        raise DataError(f'{ann_file}: class_index=category_id needs non-negative category ids')
    label_map = {int(c['id']) if by_category_id else i:
                 {'id': int(c['id']), 'name': c.get('name', str(c['id'])),
                  'isthing': bool(c.get('isthing', 1))} for i, c in enumerate(cats)}
    return label_map, {v['id']: k for k, v in label_map.items()}


def _area(ann, h, w):
    """COCO's `area`: the object's mask area, or its box's without a mask."""
    seg = ann.get('segmentation')
    if seg:
        try:
            from pycocotools import mask as mask_utils
            compressed = isinstance(seg, dict) and isinstance(seg.get('counts'), (str, bytes))
            rles = seg if compressed else mask_utils.frPyObjects(seg, h, w)
            rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
            return float(mask_utils.area(rle))
        except (TypeError, ValueError, KeyError, IndexError):
            pass  # an unusable mask: the box's area
    return float(ann['bbox'][2] * ann['bbox'][3])


def load_instances(ann_file, image_dir, on_bad_input='error', name=None, by_category_id=False,
                   label_map=None):
    """A COCO instances json + image folder -> Source.

    Class indices are contiguous in id order, or with `by_category_id` the
    category ids themselves (the original's layout for COCO: 91 classes), or
    with `label_map` (class index -> {id, ...}: the model's, when evaluating
    it) that map's indices, the file's categories matched to it by id (an
    object of a category the model does not know is a defect; categories
    only listed do not matter).

    Everything pycocotools would check at evaluation is checked here, for
    every split: a defect names the file and the image or annotation, or is
    dropped and counted (`on_bad_input='skip'`, `Source.skipped`).
    `Source.ground_truth` is the cleaned json evaluation uses: dropped
    entries left out, a missing `area` filled from the mask or box and a
    missing `iscrowd` with 0, as COCO defines them (logged once). Training
    targets are the boxes clipped to the image, degenerate ones dropped, as
    the original's ConvertCocoPolysToMask does (counted and logged).
    """
    data = _load_coco_json(ann_file)
    anns = data.get('annotations', [])
    if not isinstance(data['images'], list) or not isinstance(anns, list):
        raise DataError(f'{ann_file}: "images" and "annotations" must be lists')
    defect = _Defects(ann_file, on_bad_input)
    images, dropped_images = _images(data, image_dir, defect)
    label_map, cat_to_idx = _categories(data, ann_file, by_category_id, label_map)
    file_cats = {c['id']: c for c in data['categories']}
    sizes = {im['id']: (im['height'], im['width']) for im in images}
    by_image, gt_anns, seen_ann = collections.defaultdict(list), [], set()
    for ann in anns:
        if not isinstance(ann, dict):
            defect(f'annotation {str(ann)[:80]}', 'is not an object', 'annotation not an object')
            continue
        what = f'annotation id {ann.get("id")} (image {ann.get("image_id")})'
        if not isinstance(ann.get('id'), int) or isinstance(ann.get('id'), bool):
            defect(what, 'needs an integer "id"', 'annotation without id')
            continue
        if ann['id'] in seen_ann:
            defect(what, f'duplicate annotation id {ann["id"]}', 'duplicate annotation id')
            continue
        seen_ann.add(ann['id'])
        if ann.get('image_id') in dropped_images:
            defect.skipped['annotations of skipped images'] += 1
            continue
        if ann.get('image_id') not in sizes:
            defect(what, 'refers to an unknown image id', 'unknown image id')
            continue
        cid = ann.get('category_id')
        if cid not in file_cats:
            defect(what, f'unknown category id {cid}', 'unknown category id')
            continue
        if cid not in cat_to_idx:
            defect(what, f'category id {cid} ({file_cats[cid].get("name", "")!r}) is not one of '
                   "the model's classes", 'category unknown to the model')
            continue
        h, w = sizes[ann['image_id']]
        why, kind = _bbox_problem(ann.get('bbox'), w, h)
        if why:
            defect(what, why, kind)
            continue
        crowd = ann.get('iscrowd', 0)
        if crowd not in (0, 1):  # True and False are 1 and 0
            defect(what, f'iscrowd {crowd!r} is not 0 or 1', 'iscrowd not 0 or 1')
            continue
        area = ann.get('area')
        if area is not None and not (isinstance(area, (int, float)) and math.isfinite(area)
                                     and area >= 0):
            defect(what, f'area {area!r} is not a non-negative number', 'area not a number >= 0')
            continue
        clean = ann  # copied only to fill a field: COCO train has ~860k annotations
        if 'iscrowd' not in ann:
            clean = dict(clean, iscrowd=0)
            defect.notes['annotations without iscrowd (0, as COCO defines it)'] += 1
        if area is None:
            clean = dict(clean, area=_area(ann, h, w))
            defect.notes['annotations without area (from the mask or box, as COCO defines it)'] += 1
        gt_anns.append(clean)
        if not crowd:  # crowd: evaluated, never a target
            by_image[ann['image_id']].append(ann)
    paths, ids, hw, boxes, labels = [], [], [], [], []
    for im in images:
        objs = by_image.get(im['id'], [])
        raw = np.array([a['bbox'] for a in objs], np.float32).reshape(-1, 4)
        raw[:, 2:] += raw[:, :2]
        b = raw.copy()
        b[:, 0::2] = b[:, 0::2].clip(0, im['width'])
        b[:, 1::2] = b[:, 1::2].clip(0, im['height'])
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        clipped = int((keep & (b != raw).any(1)).sum())
        if clipped:
            defect.notes['training boxes clipped to their image'] += clipped
        if not keep.all():
            defect.notes['zero-size training boxes dropped (still evaluated)'] += int(
                (~keep).sum())
        paths.append(os.path.join(image_dir, im['file_name']))
        ids.append(im['id'])
        hw.append((im['height'], im['width']))
        boxes.append(b[keep])
        labels.append(np.array([cat_to_idx[a['category_id']] for a in objs], np.int32)[keep])
    defect.report()
    ground_truth = {'images': images, 'annotations': gt_anns, 'categories': data['categories']}
    return Source(name or os.path.basename(ann_file), paths, np.array(ids, np.int64),
                  np.array(hw, np.int32).reshape(-1, 2), boxes, labels, label_map,
                  ground_truth=ground_truth, skipped=defect.skipped)


def load_panoptic(ann_file, image_dir, png_dir, on_bad_input='error', name=None,
                  by_category_id=False, label_map=None):
    """A COCO panoptic json + images + segment PNGs -> Source with masks.

    Things and stuff both become targets (the original's panoptic
    training); crowd segments are dropped from targets. Class indices and
    defects as `load_instances` (a segment's `bbox` and `category_id` are
    checked; image sizes missing from the json are read from the files).
    """
    data = _load_coco_json(ann_file)
    defect = _Defects(ann_file, on_bad_input)
    images, _ = _images(data, image_dir, defect)
    label_map, cat_to_idx = _categories(data, ann_file, by_category_id, label_map)
    anns = {a.get('image_id'): a for a in data.get('annotations', []) if isinstance(a, dict)}
    out = dict(paths=[], ids=[], hw=[], boxes=[], labels=[], pngs=[], segs=[])
    gt_anns, thing_anns = [], []  # the segments PQ and box AP (things) evaluate against
    is_thing = {c['id']: bool(c.get('isthing', 1)) for c in data['categories']}
    for im in images:
        a = anns.get(im['id'], {'segments_info': [], 'file_name': None})
        b, lab, sid, good = [], [], [], []
        for s in a.get('segments_info', []):
            what = f'segment {s.get("id")} (image {im["id"]})'
            if s.get('category_id') not in cat_to_idx:
                defect(what, f'unknown category id {s.get("category_id")}', 'unknown category id')
                continue
            why, kind = _bbox_problem(s.get('bbox'), im['width'], im['height'])
            if why:
                defect(what, why, kind)
                continue
            good.append(s)
            if is_thing.get(s['category_id'], True):
                thing_anns.append({'id': len(thing_anns) + 1, 'image_id': im['id'],
                                   'category_id': s['category_id'], 'bbox': s['bbox'],
                                   'area': s.get('area', s['bbox'][2] * s['bbox'][3]),
                                   'iscrowd': s.get('iscrowd', 0)})
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
        out['pngs'].append(os.path.join(png_dir, a['file_name']) if a.get('file_name') else None)
        out['segs'].append(np.array(sid, np.int64))
        if a.get('file_name'):
            gt_anns.append({'image_id': im['id'], 'file_name': a['file_name'],
                            'segments_info': good})
    defect.report()
    panoptic_gt = {'images': images, 'annotations': gt_anns, 'categories': data['categories']}
    things_gt = {'images': images, 'annotations': thing_anns,
                 'categories': [c for c in data['categories'] if is_thing[c['id']]]}
    return Source(name or os.path.basename(ann_file), out['paths'], np.array(out['ids'], np.int64),
                  np.array(out['hw'], np.int32).reshape(-1, 2), out['boxes'], out['labels'],
                  label_map, ground_truth=things_gt, panoptic_pngs=out['pngs'],
                  panoptic_ground_truth=panoptic_gt, segment_ids=out['segs'],
                  skipped=defect.skipped)
