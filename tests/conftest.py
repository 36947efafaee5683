"""Eight fake CPU devices for every test (set before jax is imported), and
the reference fixtures, which live in tests/fixtures/ (a clone of the
repository is all the tests need)."""
import os
import pathlib

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'
# computed by the original PyTorch DETR (random weights; see tests/fixtures/README.md)
OFFICIAL = FIXTURES / 'detr_r50_tiny_official'
PANOPTICAPI = FIXTURES / 'pq_panopticapi'


def tiny_model_config(**kw):
    from detr_jax.models import default_model_config
    cfg = default_model_config()
    cfg.update(dict(backbone='resnet_tiny', hidden_dim=128, nheads=8, enc_layers=1,
                    dec_layers=2, dim_feedforward=64, num_queries=6, num_classes=4))
    cfg.update(kw)
    return cfg


# Files whose tests take minutes, slowest first. The README's command runs
# the suite in two worker processes (`-n 2`; setup.cfg: whole files, in
# collection order): starting these first lets the workers end together.
SLOW_FILES = ('test_demo.py', 'test_multiprocess.py', 'test_bucket_workdir.py', 'test_shards.py',
              'test_preemption.py', 'test_restart_compiles_nothing.py', 'test_console.py')


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable


@pytest.fixture(scope='session')
def reference():
    return dict(np.load(OFFICIAL / 'reference.npz'))


@pytest.fixture(scope='session')
def legacy_checkpoint(tmp_path_factory):
    """The official detection layout in torch's legacy (non-zip) format,
    written by torch's own legacy writer from the committed panoptic file:
    its detector (the `detr.` keys, prefix dropped), `{'model': state_dict}`
    only, fp16 as stored. (The same tensors, key order and size in bytes as
    the original's `checkpoint_detection_legacy.pth`; only torch's storage
    keys, which are memory addresses, differ.)"""
    import torch  # the test extra has it
    src = torch.load(OFFICIAL / 'checkpoint.pth', map_location='cpu', weights_only=False)
    detector = {k[len('detr.'):]: v for k, v in src['model'].items() if k.startswith('detr.')}
    path = tmp_path_factory.mktemp('official') / 'checkpoint_detection_legacy.pth'
    torch.save({'model': detector}, path, _use_new_zipfile_serialization=False)
    return path
