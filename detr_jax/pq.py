"""Panoptic quality (Kirillov et al., 2019) with COCO's definition, as
panopticapi's `pq_compute` computes it, on numpy (no torch, no
panopticapi).

Per image and category: a predicted and a ground-truth segment of the same
category match when their IoU is over 0.5, void pixels (ground-truth id 0)
left out of the union; crowd ground truth is never matched; an unmatched
non-crowd ground-truth segment is a false negative; an unmatched
prediction is a false positive unless over half of it lies on void or on
a crowd region of its category. PQ = sum(IoU of matches) / (TP + FP/2 +
FN/2), SQ = sum(IoU) / TP, RQ = TP / (TP + FP/2 + FN/2), averaged over the
categories that have any TP, FP or FN (All, Things, Stuff).

Segment areas: a prediction's is counted in its PNG, a ground-truth
segment's is its json `area` (panopticapi's choices).
"""
import collections
import dataclasses
from typing import Dict

import numpy as np

from detr_jax.panoptic_format import read_ids
from detr_jax.paths import as_path, read_json

VOID = 0
OFFSET = 256 * 256 * 256


@dataclasses.dataclass
class PQStat:
    """Per category id: the sum of matched IoUs, TP, FP and FN counts."""
    iou: Dict[int, float] = dataclasses.field(default_factory=lambda: collections.defaultdict(float))
    tp: Dict[int, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    fp: Dict[int, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    fn: Dict[int, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))

    def __iadd__(self, other):
        for name in ('iou', 'tp', 'fp', 'fn'):
            mine = getattr(self, name)
            for k, v in getattr(other, name).items():
                mine[k] += v
        return self

    def as_arrays(self, category_ids):
        """{'iou': float64 [K], 'counts': int64 [K, 3] (tp, fp, fn)} in
        `category_ids` order: what hosts sum (`from_arrays` reads it back)."""
        return {'iou': np.array([self.iou[c] for c in category_ids], np.float64),
                'counts': np.array([[self.tp[c], self.fp[c], self.fn[c]] for c in category_ids],
                                   np.int64).reshape(-1, 3)}

    @classmethod
    def from_arrays(cls, arrays, category_ids):
        stat = cls()
        for c, iou, (tp, fp, fn) in zip(category_ids, arrays['iou'], arrays['counts']):
            stat.iou[c] += float(iou)
            stat.tp[c] += int(tp)
            stat.fp[c] += int(fp)
            stat.fn[c] += int(fn)
        return stat


def image_stat(gt_ids, gt_segments, pred_ids, pred_segments, categories, image_id=None):
    """PQStat of one image.

    gt_ids, pred_ids: segment-id maps [H, W] of the same size (0 = void).
    gt_segments: the ground truth's `segments_info` (`id`, `category_id`,
      `iscrowd`, `area`); pred_segments: the prediction's (`id`,
      `category_id`; its areas are counted in `pred_ids`).
    categories: category id -> {'isthing', ...} (the ground truth's).
    Raises KeyError, naming the image, for a prediction whose PNG and json
    disagree or whose category is unknown (panopticapi's checks)."""
    where = f'In the image with ID {image_id}' if image_id is not None else 'In the image'
    gt_ids, pred_ids = np.asarray(gt_ids, np.uint64), np.asarray(pred_ids, np.uint64)
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f'{where} the prediction is {pred_ids.shape[0]}x{pred_ids.shape[1]}, '
                         f'the ground truth {gt_ids.shape[0]}x{gt_ids.shape[1]}')
    gt_segms = {int(s['id']): s for s in gt_segments}
    pred_segms = {int(s['id']): dict(s) for s in pred_segments}
    unseen = set(pred_segms)
    for label, count in zip(*np.unique(pred_ids, return_counts=True)):
        label = int(label)
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(f'{where} segment with ID {label} is presented in PNG and not '
                           'presented in JSON.')
        pred_segms[label]['area'] = int(count)
        unseen.discard(label)
        if pred_segms[label]['category_id'] not in categories:
            raise KeyError(f'{where} segment with ID {label} has unknown category_id '
                           f'{pred_segms[label]["category_id"]}.')
    if unseen:
        raise KeyError(f'{where} the following segment IDs {sorted(unseen)} are presented in '
                       'JSON and not presented in PNG.')

    joint, counts = np.unique(gt_ids * np.uint64(OFFSET) + pred_ids, return_counts=True)
    overlap = {(int(j) // OFFSET, int(j) % OFFSET): int(n) for j, n in zip(joint, counts)}
    stat = PQStat()
    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), inter in overlap.items():
        if gt_label not in gt_segms or pred_label not in pred_segms:
            continue
        gt, pred = gt_segms[gt_label], pred_segms[pred_label]
        if gt.get('iscrowd', 0) == 1 or gt['category_id'] != pred['category_id']:
            continue
        union = pred['area'] + gt['area'] - inter - overlap.get((VOID, pred_label), 0)
        iou = inter / union
        if iou > 0.5:
            stat.tp[gt['category_id']] += 1
            stat.iou[gt['category_id']] += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)
    crowd = {}  # category -> its (last) crowd segment
    for gt_label, gt in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt.get('iscrowd', 0) == 1:
            crowd[gt['category_id']] = gt_label
            continue
        stat.fn[gt['category_id']] += 1
    for pred_label, pred in pred_segms.items():
        if pred_label in pred_matched:
            continue
        ignored = overlap.get((VOID, pred_label), 0)
        if pred['category_id'] in crowd:
            ignored += overlap.get((crowd[pred['category_id']], pred_label), 0)
        if ignored / pred['area'] > 0.5:
            continue
        stat.fp[pred['category_id']] += 1
    return stat


def pq_average(stat, categories, isthing=None):
    """(summary {'pq', 'sq', 'rq', 'n'}, per class {id: {'pq', 'sq', 'rq'}})
    over `categories` (all, things only with `isthing=True`, stuff only
    with False). A category with no TP, FP or FN scores 0 and is not
    counted in `n`; with n = 0 the summary is 0 (panopticapi divides by
    zero)."""
    pq = sq = rq = 0.0
    n = 0
    per_class = {}
    for cat, info in categories.items():
        if isthing is not None and (info['isthing'] == 1) != isthing:
            continue
        iou, tp, fp, fn = stat.iou[cat], stat.tp[cat], stat.fp[cat], stat.fn[cat]
        if tp + fp + fn == 0:
            per_class[cat] = {'pq': 0.0, 'sq': 0.0, 'rq': 0.0}
            continue
        n += 1
        denom = tp + 0.5 * fp + 0.5 * fn
        per_class[cat] = {'pq': iou / denom, 'sq': iou / tp if tp else 0, 'rq': tp / denom}
        pq += per_class[cat]['pq']
        sq += per_class[cat]['sq']
        rq += per_class[cat]['rq']
    if n == 0:
        return {'pq': 0.0, 'sq': 0.0, 'rq': 0.0, 'n': 0}, per_class
    return {'pq': pq / n, 'sq': sq / n, 'rq': rq / n, 'n': n}, per_class


def summarize(stat, categories):
    """panopticapi's result dict: 'All', 'Things', 'Stuff' (each pq, sq,
    rq, n) and 'per_class' (category id -> pq, sq, rq)."""
    results = {}
    for name, isthing in (('All', None), ('Things', True), ('Stuff', False)):
        results[name], per_class = pq_average(stat, categories, isthing)
        if name == 'All':
            results['per_class'] = per_class
    return results


def _default_folder(json_file):
    s = str(json_file)
    return s[:-len('.json')] if s.endswith('.json') else s


def pq_compute(gt_json_file, pred_json_file, gt_folder=None, pred_folder=None):
    """panopticapi's entry point: PQ of the predictions in COCO's panoptic
    format (`pred_json_file` + PNGs in `pred_folder`, default: the json's
    path without `.json`) against the ground truth (likewise). Every
    ground-truth image needs a prediction. Returns `summarize`'s dict."""
    gt_json, pred_json = read_json(gt_json_file), read_json(pred_json_file)
    gt_folder = as_path(gt_folder or _default_folder(gt_json_file))
    pred_folder = as_path(pred_folder or _default_folder(pred_json_file))
    categories = {c['id']: c for c in gt_json['categories']}
    preds = {a['image_id']: a for a in pred_json['annotations']}
    stat = PQStat()
    for gt_ann in gt_json['annotations']:
        image_id = gt_ann['image_id']
        if image_id not in preds:
            raise KeyError(f'{pred_json_file}: no prediction for the image with id: {image_id}')
        pred_ann = preds[image_id]
        stat += image_stat(read_ids(gt_folder / gt_ann['file_name']), gt_ann['segments_info'],
                           read_ids(pred_folder / pred_ann['file_name']),
                           pred_ann['segments_info'], categories, image_id)
    return summarize(stat, categories)
