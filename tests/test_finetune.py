"""configs/finetune_coco_format.py as its docstring says to run it: only the
data paths given, class indices from the file's categories (ids 5, 9, 300),
`model.num_classes` inferred, results written back with those ids; a wrong
`num_classes` is an error that names the right value."""
import json
import os
import subprocess
import sys

import pytest

from detr_jax import checkpoints
from detr_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDS = {1: 5, 2: 9, 3: 300}  # synthetic disc, square, triangle -> the user's ids
# the model and image sizes of tests/tiny_config.py, as command-line overrides
TINY = ['--config.model.backbone=resnet_tiny', '--config.model.hidden_dim=64',
        '--config.model.nheads=4', '--config.model.dim_feedforward=64',
        '--config.model.enc_layers=1', '--config.model.dec_layers=2',
        '--config.model.num_queries=12', '--config.data.scales=(64,80)',
        '--config.data.max_size=96', '--config.data.crop_resize=(64,)',
        '--config.data.crop_min=48', '--config.data.crop_max=64', '--config.data.eval_size=64',
        '--config.data.eval_max_size=96', '--config.data.buckets=((96,96),)',
        '--config.data.eval_buckets=((96,96),)', '--config.data.max_boxes=8',
        '--config.optim.lr=1e-3', '--config.optim.lr_backbone=1e-4']


def _user_folder(root, split, n):
    """A COCO folder whose categories are 5, 9 and 300 (listed out of order)."""
    p = synthetic.write_coco(str(root / f'src_{split}'), split, n, seed=3, min_size=64,
                             max_size=96, max_objects=5)
    data = json.load(open(p['instances']))
    data['annotations'] = [dict(a, category_id=IDS[a['category_id']])
                           for a in data['annotations'] if a['category_id'] in IDS]
    data['categories'] = [{'id': 300, 'name': 'triangle'}, {'id': 5, 'name': 'disc'},
                          {'id': 9, 'name': 'square'}]
    ann = root / f'{split}.json'
    ann.write_text(json.dumps(data))
    return ['--config.data.' + f'{split}_ann={ann}', f'--config.data.{split}_images={p["images"]}']


def _run(workdir, *flags):
    cmd = [sys.executable, '-m', 'detr_jax.main', '--config=configs/finetune_coco_format.py',
           f'--workdir={workdir}', *TINY, *flags]
    env = dict(os.environ, XLA_FLAGS='', PYTHONPATH=ROOT)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('user_data')
    return _user_folder(root, 'train', 48) + _user_folder(root, 'val', 16)


def test_finetune_config_trains_and_evaluates_with_the_files_ids(tmp_path, data):
    wd = tmp_path / 'ft'
    r = _run(wd, *data, '--config.train.max_steps=20', '--config.train.eval_every=-1',
             '--config.train.checkpoint_every=20')
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.load(open(wd / 'eval' / 'results_20.json'))
    assert results and {d['category_id'] for d in results} <= set(IDS.values())
    metrics = json.load(open(wd / 'eval' / 'metrics_20.json'))
    assert metrics['images'] == 16 and 0.0 <= metrics['AP'] <= 1.0
    config, variables, step = checkpoints.load_workdir(str(wd))
    assert step == 20 and config.model.num_classes == 3
    assert {int(k): v['id'] for k, v in config.model.label_map.items()} == {0: 5, 1: 9, 2: 300}
    assert variables['params']['class_embed']['dense']['kernel'].shape[-1] == 4  # + no object


@pytest.mark.parametrize('given', [2, 5])
def test_a_wrong_num_classes_names_the_right_one(tmp_path, data, given):
    r = _run(tmp_path / 'bad', *data, f'--config.model.num_classes={given}')
    assert r.returncode != 0
    assert f'config.model.num_classes={given} does not fit' in r.stderr
    assert 'need num_classes=3' in r.stderr
