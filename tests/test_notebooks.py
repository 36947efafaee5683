"""The notebooks run top to bottom in a real Jupyter kernel (nbclient) on a
small official-format checkpoint and the fixture's real photos."""
import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import PANOPTICAPI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(name, tmp_path):
    nb = nbformat.read(os.path.join(ROOT, 'notebooks', name), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name='python3',
                   resources={'metadata': {'path': os.path.join(ROOT, 'notebooks')}}).execute()
    nbformat.write(nb, str(tmp_path / name))  # the executed copy, for a look when it fails
    return nb


def _text(cell):
    return ''.join(o.get('text', '') for o in cell.get('outputs', []))


def _has_picture(cell):
    return any('image/png' in o.get('data', {}) for o in cell.get('outputs', []))


@pytest.fixture
def photos_with_boxes(tmp_path):
    """COCO instances json of the fixture's two photos: their thing segments'
    boxes from the panoptic ground truth."""
    gt = json.loads((PANOPTICAPI / 'gt.json').read_text())
    things = {c['id'] for c in gt['categories'] if c['isthing']}
    segments = [(image['image_id'], s) for image in gt['annotations']
                for s in image['segments_info'] if s['category_id'] in things]
    annotations = [dict(id=k + 1, image_id=i, category_id=s['category_id'], bbox=s['bbox'],
                        area=s['area'], iscrowd=s['iscrowd']) for k, (i, s) in enumerate(segments)]
    path = tmp_path / 'instances.json'
    path.write_text(json.dumps({'images': gt['images'], 'annotations': annotations,
                                'categories': [c for c in gt['categories'] if c['isthing']]}))
    return path


def test_evaluate_notebook(tmp_path, monkeypatch, legacy_checkpoint, photos_with_boxes):
    monkeypatch.setenv('DETR_JAX_CHECKPOINT', str(legacy_checkpoint))
    monkeypatch.setenv('DETR_JAX_IMAGES', str(PANOPTICAPI / 'images'))
    monkeypatch.setenv('DETR_JAX_ANNOTATIONS', str(photos_with_boxes))
    monkeypatch.setenv('DETR_JAX_THRESHOLD', '0.0')
    code = [c for c in _run('evaluate.ipynb', tmp_path).cells if c.cell_type == 'code']
    assert 'resnet50, 250 classes, 20 queries, detection' in _text(code[2])
    assert '| AP | AP50 |' in _text(code[3])
    shown = _text(code[4])
    assert '000000142238.jpg:' in shown and '000000439180.jpg:' in shown
    assert _has_picture(code[4])


def test_attention_notebook(tmp_path, monkeypatch, legacy_checkpoint):
    monkeypatch.setenv('DETR_JAX_CHECKPOINT', str(legacy_checkpoint))
    monkeypatch.setenv('DETR_JAX_PHOTO', str(PANOPTICAPI / 'images' / '000000439180.jpg'))
    code = [c for c in _run('attention.ipynb', tmp_path).cells if c.cell_type == 'code']
    assert 'decoder attention (3,' not in _text(code[2])  # every query kept: 20 maps
    assert 'decoder attention (20, ' in _text(code[2])
    assert _has_picture(code[3]) and _has_picture(code[4])
