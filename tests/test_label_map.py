"""Evaluation uses the label map stored with the weights: a validation file
whose category list differs from the training file's (one missing, one
extra, another order) gets its results written with the right ids, and the
same AP as with the training file's list."""
import json

import numpy as np
import pytest

import tiny_config
from detr_jax import checkpoints, evaluate, train
from detr_jax.data.coco_format import DataError, load_instances
from test_finetune import IDS, _user_folder

# the training file lists 300, 5, 9 (tests/test_finetune.py)
VARIANTS = {
    # (category list, annotations of the dropped category removed)
    'another order': ([9, 300, 5], None),
    'one missing': ([5, 9], 300),
    'one extra': ([5, 7, 9, 300], None),
}


def _variant(tmp_path, train_ann, name, cats, drop):
    data = json.load(open(train_ann))
    if drop is not None:
        data['annotations'] = [a for a in data['annotations'] if a['category_id'] != drop]
    names = {c['id']: c['name'] for c in data['categories']}
    reference = dict(data)  # the same annotations under the training file's list
    data = dict(data, categories=[{'id': i, 'name': names.get(i, 'new')} for i in cats])
    paths = []
    for tag, d in ((name, data), (name + ' reference', reference)):
        p = tmp_path / (tag.replace(' ', '_') + '.json')
        p.write_text(json.dumps(d))
        paths.append(str(p))
    return paths


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('label_map')
    train_flags = _user_folder(root, 'train', 48)
    val_flags = _user_folder(root, 'val', 16)
    value = lambda flag: flag.split('=', 1)[1]  # noqa: E731
    return root, value(train_flags[0]), value(train_flags[1]), value(val_flags[0]), \
        value(val_flags[1])


@pytest.mark.parametrize('name', list(VARIANTS))
def test_oracle_detections_keep_their_ids(tmp_path, folder, name):
    """Detections that are the ground truth, in the training file's class
    indices, score AP 1 under every category list."""
    _, train_ann, train_images, val_ann, val_images = folder
    model_map = load_instances(train_ann, train_images).label_map
    path, ref_path = _variant(tmp_path, val_ann, name, *VARIANTS[name])
    aps = []
    for p in (path, ref_path):
        src = load_instances(p, val_images, label_map=model_map)
        assert src.label_map == model_map
        results = []
        for img_id, boxes, labels in zip(src.image_ids, src.boxes, src.labels):
            dets = {'scores': np.ones((1, len(labels))), 'labels': labels[None],
                    'boxes': boxes[None]}
            results += evaluate.results_from_detections(dets, [img_id], src.label_map)
        truth = {a['id']: a['category_id'] for a in src.ground_truth['annotations']}
        assert results and {r['category_id'] for r in results} <= set(truth.values())
        aps.append(evaluate.coco_ap(src.ground_truth, results, list(src.image_ids)))
    assert aps[0] == aps[1] and aps[0]['AP50'] == pytest.approx(1.0)


def test_an_object_of_a_category_the_model_does_not_know(tmp_path, folder):
    _, train_ann, train_images, val_ann, val_images = folder
    model_map = load_instances(train_ann, train_images).label_map
    data = json.load(open(val_ann))
    data['categories'].append({'id': 7, 'name': 'hexagon'})
    data['annotations'][0]['category_id'] = 7
    p = tmp_path / 'unknown.json'
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"category id 7 \('hexagon'\) is not one of the model's"):
        load_instances(str(p), val_images, label_map=model_map)
    src = load_instances(str(p), val_images, label_map=model_map, on_bad_input='skip')
    assert src.skipped == {'category unknown to the model': 1}


def test_mode_eval_uses_the_checkpoints_label_map(tmp_path, folder):
    """A trained run evaluated (`--mode=eval`: the stored config, a new
    `data.val_ann`) on each variant writes the same results, with the same
    AP, as on the same annotations under the training file's list."""
    _, train_ann, train_images, val_ann, val_images = folder
    c = tiny_config.get_config()
    c.model.num_classes = 3
    c.data.update(dataset='coco_folder', train_ann=train_ann, train_images=train_images,
                  val_ann=val_ann, val_images=val_images)
    c.train.update(max_steps=30, checkpoint_every=30, eval_every=0)
    c.model.dropout = 0.0
    wd = str(tmp_path / 'wd')
    train.train_and_evaluate(c, wd)
    for name, (cats, drop) in VARIANTS.items():
        outs = []
        for p in _variant(tmp_path, val_ann, name, cats, drop):
            metrics = evaluate.evaluate_checkpoint(wd, overrides={'data.val_ann': p})
            results = json.load(open(f'{wd}/eval/results_30.json'))
            outs.append((metrics, results))
        (m_var, r_var), (m_ref, r_ref) = outs
        assert r_var == r_ref and r_var, name
        assert {r['category_id'] for r in r_var} <= set(IDS.values())
        assert {k: v for k, v in m_var.items() if k != 'picture'} == \
            {k: v for k, v in m_ref.items() if k != 'picture'}, name
    config, _, _ = checkpoints.load_workdir(wd)
    assert {v['id'] for v in config.model.label_map.values()} == set(IDS.values())
