"""COCO box AP of a model on a Source (pycocotools), and PQ (panoptic)."""
import contextlib
import copy
import io
import json
import logging
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from detr_jax.data.normalize import normalize
from detr_jax.data.pipeline import eval_batches
from detr_jax.postprocess import detections

AP_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')


def to_global(batch, mesh):
    """Host-local numpy batch -> global jax.Arrays sharded on 'data'."""
    sharding = NamedSharding(mesh, P('data'))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def to_host(x):
    """A global array -> numpy on every host (all hosts' rows)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def make_eval_step(model):
    @jax.jit
    def eval_step(variables, batch):
        mask = batch['pixel_mask']
        out = model.apply(variables, normalize(batch['images'], mask), mask, train=False)
        return detections(out, batch['orig_size'])
    return eval_step


def results_from_detections(dets, image_ids, label_map):
    """COCO results (dataset category ids, xywh boxes); fillers (id -1) dropped."""
    res = []
    for i, img_id in enumerate(image_ids):
        if img_id < 0:
            continue
        for s, l, b in zip(dets['scores'][i], dets['labels'][i], dets['boxes'][i]):
            if int(l) not in label_map:
                continue  # a class index the dataset does not have
            res.append({'image_id': int(img_id), 'category_id': int(label_map[int(l)]['id']),
                        'bbox': [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                        'score': float(s)})
    return res


def predict(model, variables, source, data_cfg, mesh, eval_step=None, max_images=-1):
    """Runs the model over `source` -> (COCO results, evaluated image ids,
    a few (batch, dets) pairs for drawings)."""
    eval_step = eval_step or make_eval_step(model)
    if 0 < max_images < len(source):
        source = source.head(max_images)
    results, ids, samples = [], [], []
    for batch in eval_batches(source, data_cfg, jax.process_index(), jax.process_count()):
        dets = eval_step(variables, to_global({k: v for k, v in batch.items() if k != 'masks'}, mesh))
        dets = {k: to_host(v) for k, v in dets.items()}
        image_ids = to_host(jax.make_array_from_process_local_data(
            NamedSharding(mesh, P('data')), batch['image_id']))
        results += results_from_detections(dets, image_ids, source.label_map)
        ids += [int(i) for i in image_ids if i >= 0]
        if len(samples) < 2:
            samples.append((batch, {k: v[:len(batch['image_id'])] for k, v in dets.items()}))
    return results, ids, samples


def coco_ap(ann_file, results, image_ids=None, out_json=None):
    """pycocotools bbox AP/AP50/AP75/APs/APm/APl (0 when there are no results)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    if out_json:
        os.makedirs(os.path.dirname(out_json), exist_ok=True)
        with open(out_json, 'w') as f:
            json.dump(results, f)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
    if not results:
        return {k: 0.0 for k in AP_NAMES}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        dt = gt.loadRes(copy.deepcopy(results))  # loadRes edits its input
        ev = COCOeval(gt, dt, 'bbox')
        if image_ids is not None:
            ev.params.imgIds = sorted(set(image_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logging.info('COCO eval:\n%s', buf.getvalue())
    return {k: float(max(v, 0.0)) for k, v in zip(AP_NAMES, ev.stats[:6])}


def format_table(metrics):
    names = [k for k in AP_NAMES if k in metrics]
    head = '| ' + ' | '.join(names) + ' |'
    sep = '|' + '|'.join('---' for _ in names) + '|'
    row = '| ' + ' | '.join(f'{100 * metrics[k]:.1f}' for k in names) + ' |'
    return '\n'.join([head, sep, row])
