"""Checkpoint conversion: torch-free reading, corrupt inputs, the CLI round
trip, published-checkpoint lookup."""
import os
import pickle
import subprocess
import sys
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import OFFICIAL
from detr_jax import convert
from detr_jax.cli import main as cli_main
from detr_jax.models import build_model
from detr_jax.pth_reader import CheckpointError, load_pth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NO_TORCH = r'''
import sys
sys.modules['torch'] = None  # "import torch" now raises ImportError
import numpy as np, jax, jax.numpy as jnp
from detr_jax import convert
from detr_jax.models import build_model
ref = np.load(sys.argv[1] + '/reference.npz')
paths = {'checkpoint.pth': sys.argv[1] + '/checkpoint.pth', 'legacy': sys.argv[2]}
x = jnp.asarray(ref['pixels_nchw'].transpose(0, 2, 3, 1)); pm = jnp.asarray(~ref['padding_mask'])
for name, masks in (('checkpoint.pth', True), ('legacy', False)):
    cfg, v = convert.load_checkpoint(paths[name])
    out = build_model(cfg).apply(v, x, pm)
    assert 'torch' not in sys.modules or sys.modules['torch'] is None
    keys = ['pred_logits', 'pred_boxes'] + (['pred_masks'] if masks else [])
    for k in keys:
        err = float(np.abs(np.asarray(out[k]) - ref[k]).max())
        assert err < 1e-4, (name, k, err)
    aux = float(np.abs(np.asarray(out['aux_outputs'][0]['pred_logits']) - ref['aux_logits'][0]).max())
    assert aux < 1e-4, aux
print('OK without torch')
'''


def test_fixture_loads_without_torch(legacy_checkpoint):
    env = dict(os.environ, XLA_FLAGS='', PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, '-c', NO_TORCH, str(OFFICIAL), str(legacy_checkpoint)],
                       env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'OK without torch' in r.stdout


def test_reader_matches_torch_load(legacy_checkpoint):
    ours = load_pth(legacy_checkpoint)['model']
    theirs = torch.load(legacy_checkpoint, weights_only=False)['model']
    assert set(ours) == set(theirs)
    for k in theirs:
        np.testing.assert_array_equal(ours[k], theirs[k].numpy())
    z = load_pth(OFFICIAL / 'checkpoint.pth')
    assert z['args'].dilation is False and z['model']['detr.query_embed.weight'].dtype == np.float16


@pytest.mark.parametrize('name', ['checkpoint.pth', 'checkpoint_detection_legacy.pth'])
def test_truncated_file(tmp_path, name, legacy_checkpoint):
    src = OFFICIAL / name if name == 'checkpoint.pth' else legacy_checkpoint
    data = src.read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=str(bad)):
        convert.load_checkpoint(bad)


class _Evil:
    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_malicious_pickle_is_refused_not_run(tmp_path):
    marker = tmp_path / 'pwned'
    evil = _Evil()
    evil.marker = marker
    for path in (tmp_path / 'evil_legacy.pth', tmp_path / 'evil_zip.pth'):
        if 'zip' in path.name:
            with zipfile.ZipFile(path, 'w') as z:
                z.writestr('archive/data.pkl', pickle.dumps({'model': evil}))
        else:
            with open(path, 'wb') as f:
                for obj in (0x1950A86A20F9469CFC6C, 1001, {}):
                    pickle.dump(obj, f)
                pickle.dump({'model': evil}, f)
        with pytest.raises(CheckpointError, match=r'refusing to load (posix|os)\.system'):
            convert.load_checkpoint(path)
    assert not marker.exists()


def _state_dict(path):
    return {k: torch.from_numpy(np.asarray(v)) for k, v in load_pth(path)['model'].items()}


@pytest.mark.parametrize('edit,match', [
    ('missing', r'missing keys: transformer\.decoder\.layers\.1\.norm2\.bias'),
    ('extra', r'unexpected keys: transformer\.extra\.weight'),
    ('shape', r'wrong shapes: input_proj\.bias: file \(255,\) vs model \(256,\)'),
])
def test_bad_keys_are_listed(tmp_path, edit, match, legacy_checkpoint):
    sd = _state_dict(legacy_checkpoint)
    if edit == 'missing':
        del sd['transformer.decoder.layers.1.norm2.bias']
    elif edit == 'extra':
        sd['transformer.extra.weight'] = torch.zeros(3)
    else:
        sd['input_proj.bias'] = torch.zeros(255)
    path = tmp_path / f'{edit}.pth'
    torch.save({'model': sd}, path)
    with pytest.raises(CheckpointError, match=match) as e:
        convert.load_checkpoint(path)
    assert str(path) in str(e.value)


def test_convert_cli_round_trip(tmp_path, reference, capsys):
    out = tmp_path / 'converted'
    assert cli_main(['detr-jax', 'convert', str(OFFICIAL / 'checkpoint.pth'), '--out', str(out),
                     '--dilation']) == 0
    assert 'resnet50 DC5' in capsys.readouterr().out
    cfg, variables = convert.load_checkpoint(out)
    assert cfg.dilation and cfg.masks and cfg.label_map['1']['name'] == 'person'
    ref_cfg, ref_vars = convert.load_checkpoint(OFFICIAL / 'checkpoint.pth', dilation=True)
    x = jnp.asarray(reference['pixels_nchw'].transpose(0, 2, 3, 1))
    pm = jnp.asarray(~reference['padding_mask'])
    a = build_model(cfg).apply(variables, x, pm)
    b = build_model(ref_cfg).apply(ref_vars, x, pm)
    for k in ('pred_logits', 'pred_boxes', 'pred_masks'):
        np.testing.assert_array_equal(a[k], b[k])


def test_published_lookup_and_hash(tmp_path, legacy_checkpoint):
    with pytest.raises(CheckpointError, match='download it from https://dl.fbaipublicfiles'):
        convert.from_pretrained('detr_resnet50', search_dirs=[str(tmp_path)])
    fake = tmp_path / 'detr-r50-e632da11.pth'
    fake.write_bytes(legacy_checkpoint.read_bytes())
    with pytest.raises(CheckpointError, match='does not start with e632da11'):
        convert.from_pretrained('detr_resnet50', search_dirs=[str(tmp_path)])
    cfg, _ = convert.from_pretrained(str(legacy_checkpoint))
    assert cfg.num_classes == 250 and not cfg.masks
