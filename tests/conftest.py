"""Eight fake CPU devices for every test (set before jax is imported)."""
import os
import pathlib

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'fixtures'
OFFICIAL = FIXTURES / 'detr_r50_tiny_official'


def tiny_model_config(**kw):
    from detr_jax.models import default_model_config
    cfg = default_model_config()
    cfg.update(dict(backbone='resnet_tiny', hidden_dim=128, nheads=8, enc_layers=1,
                    dec_layers=2, dim_feedforward=64, num_queries=6, num_classes=4))
    cfg.update(kw)
    return cfg


@pytest.fixture(scope='session')
def reference():
    return dict(np.load(OFFICIAL / 'reference.npz'))
