"""The notebooks run top to bottom (code cells executed in order)."""
import json
import os


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_evaluate_notebook_runs(tmp_path, monkeypatch, legacy_checkpoint):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('DETR_JAX_CHECKPOINT', str(legacy_checkpoint))
    monkeypatch.setenv('DETR_JAX_THRESHOLD', '0.0')
    nb = json.load(open(os.path.join(ROOT, 'notebooks', 'evaluate_and_visualize.ipynb')))
    scope = {}
    for cell in nb['cells']:
        if cell['cell_type'] == 'code':
            exec(compile(''.join(cell['source']), 'notebook', 'exec'), scope)
    assert len(scope['results']) == 4
    assert scope['picture'].size[0] > 0
    assert all(len(d['scores']) == 20 for _, _, d in scope['results'])  # threshold 0: every query
