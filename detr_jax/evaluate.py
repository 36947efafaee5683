"""Evaluation: COCO box AP of a model on a Source (pycocotools) and, for
panoptic models, PQ (`pq`: the panoptic post-processing's segments against
the source's panoptic ground truth), during training (`run_eval`) and for a
finished run or a converted checkpoint (`evaluate_checkpoint`,
`--mode=eval`).
"""
import contextlib
import copy
import io
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax import checkpoints, console
from detr_jax.config_defaults import validate_config
from detr_jax.data.datasets import build_source
from detr_jax.data.pipeline import EVAL_STEP_KEYS, eval_batches, split_batch
from detr_jax.models import full_model_config
from detr_jax.panoptic_format import write_ids
from detr_jax.paths import as_path, metric_writer, read_json, write_json, write_png
from detr_jax.postprocess import is_thing_per_class, panoptic_segments
from detr_jax.pq import PQStat, image_stat, summarize
from detr_jax.pq import pq_compute  # noqa: F401  (panopticapi's entry point, here)
from detr_jax.sharding import local_rows, make_mesh, to_global, to_host

AP_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')


def coco_result(image_id, category_id, box_xyxy, score):
    """One COCO results json entry: `bbox` is [x, y, w, h] in pixels."""
    b = box_xyxy
    return {'image_id': int(image_id), 'category_id': int(category_id),
            'bbox': [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            'score': float(score)}


def results_from_detections(dets, image_ids, label_map):
    """COCO results (dataset category ids, xywh boxes); fillers (id -1) dropped."""
    res = []
    for i, img_id in enumerate(image_ids):
        if img_id < 0:
            continue
        for s, l, b in zip(dets['scores'][i], dets['labels'][i], dets['boxes'][i]):
            if int(l) not in label_map:
                continue  # a class index the dataset does not have
            res.append(coco_result(img_id, label_map[int(l)]['id'], b, s))
    return res


DET_KEYS = ('scores', 'labels', 'boxes')


def predict(eval_step, variables, source, data_cfg, mesh, max_images=-1, panoptic=None):
    """Runs `eval_step` (a `Trainer`'s) over `source` -> (COCO results,
    evaluated image ids, a few (batch, dets) pairs for drawings). With
    `panoptic` (a `PanopticEval`), each host's images' segments go to it
    (dets of the drawings then have `panoptic`: their segments)."""
    if 0 < max_images < len(source):
        source = source.head(max_images)
    results, ids, samples = [], [], []
    for batch in eval_batches(source, data_cfg, jax.process_index(), jax.process_count()):
        device, host = split_batch(batch, EVAL_STEP_KEYS)
        out = eval_step(variables, to_global(device, mesh))
        dets = {k: to_host(out[k]) for k in DET_KEYS}
        image_ids = to_host(to_global({'image_id': host['image_id']}, mesh)['image_id'])
        results += results_from_detections(dets, image_ids, source.label_map)
        ids += [int(i) for i in image_ids if i >= 0]
        segments = panoptic.add(batch, out, mesh) if panoptic is not None else None
        if len(samples) < 2:
            n = len(batch['image_id'])
            # this host's rows of the global detections (the first ones on one host)
            first = jax.process_index() * n
            sample = {k: v[first:first + n] for k, v in dets.items()}
            if segments is not None:
                sample['panoptic'] = segments
            samples.append((batch, sample))
    return results, ids, samples


class PanopticEval:
    """PQ over the images evaluated (`pq`), each host its own images, and
    the predictions in COCO's panoptic format: PNGs in `out_dir` and their
    json entries (`annotations`).

    `source` must have `panoptic_ground_truth` (COCO panoptic json) and
    its PNGs (`Source.panoptic_ids`); its label map's `isthing` tells
    stuff classes (which merge) from things."""

    def __init__(self, source, out_dir=None):
        if source.panoptic_ground_truth is None:
            raise ValueError(f'{source.name}: no panoptic ground truth to compute PQ against '
                             '(data.panoptic=True: a COCO panoptic json and its PNGs, the '
                             'synthetic set or TFDS coco/2017_panoptic)')
        gt = source.panoptic_ground_truth
        self.categories = {c['id']: c for c in gt['categories']}
        self.gt = {a['image_id']: a for a in gt['annotations']}
        self.source = source
        self.position = {int(image_id): i for i, image_id in enumerate(source.image_ids)}
        self.label_map = source.label_map
        self.is_thing = is_thing_per_class(source.label_map, source.num_classes)
        self.out_dir = as_path(out_dir) if out_dir else None
        self.stat, self.annotations = PQStat(), []

    def add(self, batch, out, mesh):
        """One eval batch: `batch` this host's rows (numpy), `out` the eval
        step's global outputs. Returns the segments of this host's images
        (`postprocess.panoptic`'s, None for fillers)."""
        parts = {k[4:]: np.asarray(local_rows(out[k], mesh))
                 for k in ('pan_keep', 'pan_labels', 'pan_winners')}
        segments = panoptic_segments(parts, local_rows(out['pred_masks'], mesh), batch['size'],
                                     batch['orig_size'], self.is_thing, self.label_map)
        for i, image_id in enumerate(int(x) for x in batch['image_id']):
            if image_id < 0:
                segments[i] = None
                continue
            pred = segments[i]
            unknown = [s['id'] for s in pred['segments_info']
                       if s['category_id'] not in self.categories]
            if unknown:  # a class the data does not have (a COCO-layout head's unused ids)
                logging.warning('image %d: segments of classes the data does not have '
                                'scored as void: %s', image_id, unknown)
                pred = {'ids': np.where(np.isin(pred['ids'], unknown), 0, pred['ids']),
                        'segments_info': [s for s in pred['segments_info']
                                          if s['id'] not in unknown]}
                segments[i] = pred
            gt = self.gt.get(image_id, {'segments_info': []})
            gt_ids = self.source.panoptic_ids(self.position[image_id])
            if gt_ids is None:  # an image the panoptic json does not annotate: all void
                gt_ids = np.zeros(pred['ids'].shape, np.int64)
            self.stat += image_stat(gt_ids, gt['segments_info'], pred['ids'],
                                    pred['segments_info'], self.categories, image_id)
            file_name = f'{image_id:012d}.png'
            if self.out_dir is not None:
                write_ids(self.out_dir / file_name, pred['ids'])
            self.annotations.append({'image_id': image_id, 'file_name': file_name,
                                     'segments_info': [{k: s[k] for k in (
                                         'id', 'category_id', 'isthing', 'area')}
                                         for s in pred['segments_info']]})
        return segments

    def summary(self):
        """panopticapi's dict (`pq.summarize`) over every host's images."""
        stat = self.stat
        if jax.process_count() > 1:
            # JAX moves 32-bit values: the float64 IoU sums travel as two
            # float32 parts (exact to ~1e-14), the counts as int32
            from jax.experimental import multihost_utils
            cats = sorted(self.categories)
            mine = stat.as_arrays(cats)
            hi = mine['iou'].astype(np.float32)
            parts = {'hi': hi, 'lo': (mine['iou'] - hi).astype(np.float32),
                     'counts': mine['counts'].astype(np.int32)}
            every = {k: np.asarray(v) for k, v in
                     multihost_utils.process_allgather(parts).items()}
            iou = (every['hi'].astype(np.float64) + every['lo'].astype(np.float64)).sum(0)
            stat = PQStat.from_arrays({'iou': iou,
                                       'counts': every['counts'].astype(np.int64).sum(0)}, cats)
        return summarize(stat, self.categories)


PQ_NAMES = ('PQ', 'SQ', 'RQ', 'PQ_th', 'SQ_th', 'RQ_th', 'PQ_st', 'SQ_st', 'RQ_st')


def pq_metrics(summary):
    """`pq.summarize`'s dict -> flat metrics PQ, SQ, RQ and the same for
    things (_th) and stuff (_st), fractions as AP's (None where no
    category of the kind was seen)."""
    out = {}
    for name, suffix in (('All', ''), ('Things', '_th'), ('Stuff', '_st')):
        s = summary[name]
        for k in ('pq', 'sq', 'rq'):
            out[k.upper() + suffix] = float(s[k]) if s['n'] else None
    return out


def _coco(dataset):
    """A pycocotools COCO of a json dict (deep-copied: pycocotools edits it)."""
    from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    coco.createIndex()
    return coco


def coco_ap(ground_truth, results, image_ids=None, out_json=None):
    """pycocotools bbox AP/AP50/AP75/APs/APm/APl of `results` (COCO results
    json entries) against `ground_truth` (a COCO json dict, or its path),
    over `image_ids` (default: every image of the ground truth). A figure
    COCO leaves undefined (no ground truth of that size, pycocotools' -1) is
    None; with no results, defined figures are 0."""
    from pycocotools.cocoeval import COCOeval
    if out_json:
        write_json(out_json, results)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        # a path: read through epath (the TFDS index's json may be in a bucket)
        gt = _coco(ground_truth if isinstance(ground_truth, dict) else read_json(ground_truth))
        if results:
            dt = gt.loadRes(copy.deepcopy(results))  # loadRes edits its input
        else:
            dt = _coco({'images': gt.dataset['images'], 'annotations': [],
                        'categories': gt.dataset['categories']})
        ev = COCOeval(gt, dt, 'bbox')
        if image_ids is not None:
            ev.params.imgIds = sorted(set(image_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logging.info('COCO eval:\n%s', buf.getvalue())
    return {k: (float(v) if v >= 0 else None) for k, v in zip(AP_NAMES, ev.stats[:6])}


def format_table(metrics):
    names = [k for k in PQ_NAMES[::3] + AP_NAMES if k in metrics]
    head = '| ' + ' | '.join(names) + ' |'
    sep = '|' + '|'.join('---' for _ in names) + '|'
    row = '| ' + ' | '.join(console.percent(metrics[k]) for k in names) + ' |'
    return '\n'.join([head, sep, row])


def run_eval(trainer, state, source, workdir, step, writer):
    """COCO box AP of `state`'s eval weights on the validation `source`
    (things only for a panoptic model, with PQ too): the results json, the
    metrics json and a picture of predictions in `workdir/eval/` (panoptic:
    the predicted segments in COCO's format, `panoptic_{step}/*.png` and
    `panoptic_{step}.json`), scalars to `writer`, a line on the console.
    The metrics json names how detections were read off the heads
    (`config.model.detections`). Returns the metrics (with `picture`: the
    PNG's path)."""
    from detr_jax import draw
    config = trainer.config
    kind = full_model_config(config.model).detections  # postprocess.detections'
    t = time.time()
    out_dir = as_path(workdir) / 'eval'
    writes = jax.process_index() == 0  # every host has every result; one writes
    panoptic = (PanopticEval(source, out_dir / f'panoptic_{step}') if config.model.masks
                else None)
    results, ids, samples = predict(trainer.eval_step, state.eval_variables(), source,
                                    config.data, trainer.mesh,
                                    max_images=config.train.eval_max_images, panoptic=panoptic)
    metrics = coco_ap(source.ground_truth, results, ids,
                      out_json=out_dir / f'results_{step}.json' if writes else None)
    if panoptic is not None:
        summary = panoptic.summary()
        metrics.update(pq_metrics(summary))
        # each host wrote its own images' PNGs; their json entries likewise
        part = '' if jax.process_count() == 1 else f'.process{jax.process_index()}'
        write_json(out_dir / f'panoptic_{step}{part}.json',
                   {'annotations': panoptic.annotations,
                    'categories': list(panoptic.categories.values())})
        if writes:
            write_json(out_dir / f'pq_{step}.json', summary, indent=1)
    # undefined figures (None) are left out of TensorBoard
    writer.write_scalars(step, {f'eval/{k}': v for k, v in metrics.items() if v is not None})
    if writes:
        write_json(out_dir / f'metrics_{step}.json',
                   {'step': step, 'images': len(ids), 'detections': kind, **metrics}, indent=1)
    logging.info('eval at step %d (%d images, detections: %s, %.0fs):\n%s', step, len(ids), kind,
                 time.time() - t, format_table(metrics))
    pic = draw.draw_eval_samples(samples, source.label_map, max_images=config.train.num_vis_images)
    picture = None
    if pic is not None and writes:
        picture = str(out_dir / f'predictions_{step}.png')
        write_png(picture, pic)
        writer.write_images(step, {'eval/predictions': pic[None]})
    console.eval_line(step, metrics, len(ids), time.time() - t, picture, kind)
    return dict(metrics, picture=picture) if picture else metrics


def evaluate_checkpoint(workdir, config=None, overrides=None):
    """--mode=eval. With checkpoints in `workdir`: COCO AP of the latest one,
    with the run's stored config and `overrides` ({'data.val_ann': ...}: the
    values given on the command line) on top. Otherwise: COCO AP of
    `config.train.init_from` (a converted or official checkpoint) with
    `config`. Class ids come from the label map stored with the weights."""
    import ml_collections
    from detr_jax.convert import load_checkpoint
    from detr_jax.trainer import TrainState, build_trainer
    if checkpoints.is_workdir(workdir):
        stored, variables, step = checkpoints.load_workdir(workdir)
        label_map = stored.model.label_map
        config = ml_collections.ConfigDict(stored.to_dict(), type_safe=False)
        config.update_from_flattened_dict(dict(overrides or {}))
        console.say(f'evaluating step {step} of {workdir} with its stored config'
                    + (f' and {sorted(overrides)}' if overrides else ''))
    elif config is not None and config.train.init_from:
        model_cfg, variables = load_checkpoint(config.train.init_from)
        label_map = model_cfg.get('label_map') or None
        step = 0
    else:
        raise FileNotFoundError(f'{workdir}: no checkpoints to evaluate, and no '
                                '--config with config.train.init_from')
    validate_config(config)
    source = build_source(config.data, 'val', label_map=label_map)
    if config.model.num_classes is None:
        config.model.num_classes = source.num_classes
    trainer = build_trainer(config, make_mesh(), steps_per_epoch=1)
    writer = metric_writer(config, workdir)
    state = TrainState(step=jnp.asarray(step), params=variables['params'],
                       batch_stats=variables.get('batch_stats', {}), opt_state=None)
    metrics = run_eval(trainer, state, source, workdir, step, writer)
    writer.flush()
    console.say(format_table(metrics))
    return metrics
