"""TFDS `coco/2017` and `coco/2017_panoptic` as a `Source`.

The pipeline plans every epoch on the host before decoding anything, so it
needs random access and each image's size up front. Both come from TFDS
data sources (ArrayRecord files; a TFRecord-prepared copy is an error that
says how to convert it): one pass over the split reads the annotations and
each JPEG's header (images are not decoded) into an index cached beside the
synthetic data, then training reads only the examples of this host's slice
of every batch.

Labels: TFDS numbers COCO's categories 0..79 (0..132 for panoptic) in the
annotation file's id order; they are mapped to the COCO category ids, the
original's class layout (91 / 250 outputs), so converted checkpoints see the
classes they were trained on. Crowd objects are dropped from targets but kept
in the ground-truth json written for evaluation. TFDS stores `area` as an
integer: give the official annotation json (`data.val_ann`) for APs/APm/APl
exactly as the official evaluation computes them.

A malformed example (objects of unequal lengths, a duplicate image id, an
unreadable image header) or object (a box outside [0, 1], inverted or
non-finite; a label outside the classes) is an error naming the dataset,
split, example and image id, or with `on_bad_input='skip'` dropped and
counted in `Source.skipped`.
"""
import collections
import hashlib
import io
import json
import logging
import os
import pickle

import numpy as np
from PIL import Image

from detr_jax.coco_categories import COCO_CATEGORIES
from detr_jax.data.coco_format import DataError, Source
from detr_jax.paths import as_path

THING_IDS = tuple(i for i, _, thing in COCO_CATEGORIES if thing)
ALL_IDS = tuple(i for i, _, _ in COCO_CATEGORIES)
_NAMES = {i: n for i, n, _ in COCO_CATEGORIES}
_SPLITS = {'train': 'train', 'val': 'validation', 'validation': 'validation'}
# Bumped when the index layout changes: cached indexes are keyed by it.
INDEX_VERSION = 2


def _objects_key(name):
    return 'panoptic_objects' if 'panoptic' in name else 'objects'


def category_ids(builder, name):
    """TFDS label -> COCO category id, checked against TFDS's label names."""
    key = _objects_key(name)
    names = builder.info.features[key]['label'].names
    table = ALL_IDS if key == 'panoptic_objects' else THING_IDS
    if len(names) != len(table):
        raise DataError(f'{name}: {len(names)} TFDS labels, expected the {len(table)} COCO '
                        'categories')
    if not all(n.isdigit() for n in names):  # prepared data carries the real names
        for k, n in enumerate(names):
            if n != _NAMES[table[k]]:
                raise DataError(f'{name}: TFDS label {k} is {n!r}, expected COCO category '
                                f'{table[k]} {_NAMES[table[k]]!r}')
    return np.array(table, np.int32)


class TfdsReader:
    """Example i of a TFDS split -> (image, panoptic image or None), each an
    encoded bytes string or (with `tfds_decode`) a decoded uint8 array.

    Picklable and opened lazily, so tf.data worker threads share one handle.
    `tfds_decode=True` lets TFDS decode (its test mocks cannot skip decoding).
    """

    def __init__(self, name, split, data_dir='', tfds_decode=False):
        self.name, self.split, self.data_dir = name, _SPLITS.get(split, split), data_dir
        self.tfds_decode = tfds_decode
        self._ds = None

    def __getstate__(self):
        return dict(self.__dict__, _ds=None)

    @property
    def panoptic(self):
        return 'panoptic' in self.name

    def open(self):
        if self._ds is None:
            import tensorflow_datasets as tfds
            where = self.data_dir or '(the default TFDS data_dir)'
            try:
                builder = tfds.builder(self.name, data_dir=self.data_dir or None)
            except Exception as e:  # noqa: BLE001 - TFDS raises many kinds
                raise DataError(f'TFDS {self.name} in {where}: {e}') from e
            decoders = None
            if not self.tfds_decode:
                decoders = {'image': tfds.decode.SkipDecoding()}
                if self.panoptic:
                    decoders['panoptic_image'] = tfds.decode.SkipDecoding()
            try:
                self._ds = builder.as_data_source(split=self.split, decoders=decoders)
            except (NotImplementedError, ValueError, AssertionError, FileNotFoundError) as e:
                raise DataError(
                    f'TFDS {self.name} split {self.split} in {where} cannot be read with random '
                    f'access: {e}\nPrepare it with file_format="array_record", or convert a '
                    'TFRecord copy: tfds convert_format --dataset_dir=<data_dir>/'
                    f'{self.name}/<version> --out_file_format=array_record') from e
            self.builder = builder
        return self._ds

    def describe(self, i):
        return f'TFDS {self.name} {self.split} example {i}'

    def __len__(self):
        return len(self.open())

    def example(self, i):
        return self.open()[int(i)]

    def __call__(self, i):
        ex = self.example(i)
        return ex['image'], (ex['panoptic_image'] if self.panoptic else None)


def image_size(image):
    """(h, w) of an encoded image (header only) or a decoded array."""
    if isinstance(image, (bytes, np.bytes_)):
        with Image.open(io.BytesIO(image)) as im:
            w, h = im.size
        return h, w
    image = np.asarray(image)
    return int(image.shape[0]), int(image.shape[1])


def _check_objects(objs):
    """'' if the example's objects are consistent, else why."""
    lengths = {k: len(np.asarray(objs[k])) for k in ('bbox', 'label', 'is_crowd', 'id', 'area')
               if k in objs}
    if len(set(lengths.values())) > 1:
        return f'objects of unequal lengths {lengths}'
    return ''


def _object_problem(box, label, num_labels):
    """'' if a TFDS object (box [ymin, xmin, ymax, xmax] in [0, 1], label) is
    usable, else why."""
    if not np.isfinite(box).all():
        return 'non-finite box'
    ymin, xmin, ymax, xmax = box
    if ymin > ymax or xmin > xmax:
        return 'inverted box'
    if min(box) < -1e-3 or max(box) > 1 + 1e-3:
        return 'box outside the image'
    if not 0 <= label < num_labels:
        return 'unknown label'
    return ''


def build_index(reader, on_bad_input='error', progress_every=5000):
    """One pass over the split: sizes, targets and evaluation annotations."""
    ds = reader.open()
    key = _objects_key(reader.name)
    ids_table = category_ids(reader.builder, reader.name)
    skipped, notes = collections.Counter(), collections.Counter()
    out = {k: [] for k in ('index', 'image_id', 'hw', 'boxes', 'labels', 'segs', 'gt')}
    seen = set()

    def bad(i, image_id, why, count_as=None):
        if on_bad_input == 'skip':
            skipped[count_as or why] += 1
            return
        raise DataError(f'{reader.describe(i)} (image id {image_id}): {why}')

    n = len(ds)
    for i in range(n):
        ex = ds[i]
        image_id = int(ex['image/id'])
        if progress_every and (i + 1) % progress_every == 0:
            logging.info('indexing %s %s: %d/%d examples', reader.name, reader.split, i + 1, n)
        objs = ex[key]
        why = _check_objects(objs)
        if not why and image_id in seen:
            why = 'duplicate image id'
        if not why:
            try:
                h, w = image_size(ex['image'])
            except (OSError, ValueError, SyntaxError) as e:
                why = f'unreadable image: {e}'
        if why:
            bad(i, image_id, why, why.split(' {')[0].split(':')[0])
            continue
        seen.add(image_id)
        boxes, labels, segs, gt = [], [], [], []
        for k, (box, label) in enumerate(zip(np.asarray(objs['bbox'], np.float64).reshape(-1, 4),
                                             np.asarray(objs['label']))):
            why = _object_problem(box, int(label), len(ids_table))
            if why:
                bad(i, image_id, f'object {k} ({box.tolist()}, label {int(label)}): {why}', why)
                continue
            if (np.clip(box, 0, 1) != box).any():
                notes['boxes clipped to their image'] += 1
            ymin, xmin, ymax, xmax = np.clip(box, 0, 1)
            xyxy = [xmin * w, ymin * h, xmax * w, ymax * h]
            cat = int(ids_table[int(label)])
            crowd = bool(objs['is_crowd'][k])
            area = float(objs['area'][k]) if 'area' in objs else (xyxy[2] - xyxy[0]) * (xyxy[3] - xyxy[1])
            gt.append({'category_id': cat, 'iscrowd': int(crowd), 'area': area,
                       'bbox': [xyxy[0], xyxy[1], xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]],
                       # the id of the object (panoptic: of its segment in the PNG)
                       'segment_id': int(objs['id'][k])})
            if crowd:
                continue  # evaluation only
            if xyxy[2] <= xyxy[0] or xyxy[3] <= xyxy[1]:
                notes['zero-size training boxes dropped (still evaluated)'] += 1
                continue
            boxes.append(xyxy)
            labels.append(cat)
            segs.append(int(objs['id'][k]))
        out['index'].append(i)
        out['image_id'].append(image_id)
        out['hw'].append((h, w))
        out['boxes'].append(np.array(boxes, np.float32).reshape(-1, 4))
        out['labels'].append(np.array(labels, np.int32))
        out['segs'].append(np.array(segs, np.int64))
        out['gt'].append(gt)
    if skipped:
        logging.warning('%s %s: skipped %s', reader.name, reader.split, dict(skipped))
    if notes:
        logging.warning('%s %s: %s', reader.name, reader.split, dict(notes))
    return out, skipped


def _cache_path(cache_dir, reader, on_bad_input):
    b = reader.builder
    key = json.dumps([INDEX_VERSION, reader.name, str(b.version), reader.split, len(reader),
                      os.path.abspath(str(b.data_dir)), on_bad_input, reader.tfds_decode])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f'{reader.name.replace("/", "_")}_{reader.split}_{digest}.pkl')


def _gt_images(index):
    """The ground truth's `images` entries of an index."""
    return [{'id': int(image_id), 'height': int(h), 'width': int(w),
             'file_name': f'{image_id}.jpg'} for image_id, (h, w) in zip(index['image_id'],
                                                                        index['hw'])]


def write_gt_json(path, index, categories):
    """COCO ground truth from the index (crowd objects included) for the
    objects of `categories` (panoptic: the things)."""
    images, anns = _gt_images(index), []
    wanted = {c['id'] for c in categories}
    for image_id, gt in zip(index['image_id'], index['gt']):
        for a in gt:
            if a['category_id'] in wanted:
                a = {k: v for k, v in a.items() if k != 'segment_id'}
                anns.append(dict(a, id=len(anns) + 1, image_id=int(image_id)))
    tmp = as_path(f'{path}.tmp{os.getpid()}')
    tmp.write_text(json.dumps({'images': images, 'annotations': anns, 'categories': categories}))
    tmp.rename(path)


def load_tfds(name, split, data_dir='', on_bad_input='error', cache_dir='', ann_file='',
              tfds_decode=False):
    """A TFDS COCO split -> Source (labels are COCO category ids)."""
    if name.split(':')[0] not in ('coco/2017', 'coco/2017_panoptic'):
        raise DataError(f"config.data.tfds_name={name!r}: 'coco/2017' or 'coco/2017_panoptic'")
    reader = TfdsReader(name, split, data_dir, tfds_decode)
    reader.open()
    cache_dir = cache_dir or os.path.join(os.path.expanduser('~'), '.cache', 'detr_jax', 'tfds')
    as_path(cache_dir).mkdir(parents=True, exist_ok=True)
    path = _cache_path(cache_dir, reader, on_bad_input)
    if as_path(path).exists():
        index, skipped = pickle.loads(as_path(path).read_bytes())
        logging.info('%s %s: index from %s', name, reader.split, path)
    else:
        index, skipped = build_index(reader, on_bad_input)
        tmp = as_path(f'{path}.tmp{os.getpid()}')
        tmp.write_bytes(pickle.dumps((index, skipped)))
        tmp.rename(path)
    table = ALL_IDS if reader.panoptic else THING_IDS
    label_map = {i: {'id': i, 'name': _NAMES[i], 'isthing': i in THING_IDS} for i in table}
    if not ann_file:  # box AP: of the things for a panoptic split
        ann_file = path[:-4] + '_gt.json'
        if not as_path(ann_file).exists():
            write_gt_json(ann_file, index, [{'id': i, 'name': _NAMES[i]} for i in THING_IDS
                                            if i in table])
    src = Source(f'{name}-{reader.split}',
                 [reader.describe(i) for i in index['index']],
                 np.array(index['image_id'], np.int64),
                 np.array(index['hw'], np.int32).reshape(-1, 2),
                 index['boxes'], index['labels'], label_map, ground_truth=ann_file,
                 skipped=skipped, reader=reader,
                 reader_index=np.array(index['index'], np.int64))
    if reader.panoptic:
        src.segment_ids = index['segs']
        src.panoptic_ground_truth = panoptic_ground_truth(index, table)
    return src


def panoptic_ground_truth(index, category_ids):
    """COCO's panoptic json of a panoptic split's index (the PNGs stay in
    the examples: `Source.panoptic_ids`)."""
    anns = []
    for image_id, gt in zip(index['image_id'], index['gt']):
        anns.append({'image_id': int(image_id), 'file_name': f'{image_id}.png',
                     'segments_info': [{'id': a['segment_id'], 'category_id': a['category_id'],
                                        'iscrowd': a['iscrowd'], 'area': a['area'],
                                        'bbox': a['bbox']} for a in gt]})
    return {'images': _gt_images(index), 'annotations': anns,
            'categories': [{'id': i, 'name': _NAMES[i], 'isthing': int(i in THING_IDS)}
                           for i in category_ids]}
