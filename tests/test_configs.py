"""Every configs/*.py loads, validates and names its command in its docstring."""
import glob
import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_model_config
from detr_jax.models import build_model, validate_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def _config_module(path):
    """configs/NAME.py loaded as a module."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_loads_and_validates(path):
    mod = _config_module(path)
    assert 'python -m detr_jax.main' in mod.__doc__ or 'Command' in mod.__doc__
    assert 'Expected' in mod.__doc__
    cfg = mod.get_config()
    if cfg.model.num_classes is None:  # taken from the training data (config_defaults.with_classes_of)
        cfg.model.num_classes = 7
    validate_model_config(cfg.model)
    assert cfg.data.max_boxes <= cfg.model.num_queries


def test_remat_gives_the_same_outputs_and_grads():
    images, mask = jnp.ones((2, 64, 64, 3)), jnp.ones((2, 64, 64), bool)
    a, b = build_model(tiny_model_config()), build_model(tiny_model_config(remat=True))
    v = a.init(jax.random.PRNGKey(0), images, mask)
    f = lambda m: jax.grad(lambda p: m.apply({**v, 'params': p}, images, mask)  # noqa: E731
                           ['pred_boxes'].sum())(v['params'])
    for x, y in zip(jax.tree_util.tree_leaves(f(a)), jax.tree_util.tree_leaves(f(b))):
        np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.mark.parametrize('name', ['detr_r50', 'detr_r50_dc5', 'detr_r101', 'finetune_coco_format',
                                  'detr_r50_panoptic'])
def test_tpu_configs_state_their_plan(name):
    """Each TPU config's docstring gives its `detr-jax plan` on both slices the
    project plans for (HBM per chip, the bound per epoch)."""
    doc = open(os.path.join(ROOT, 'configs', f'{name}.py')).read().split('"""')[1]
    assert 'detr-jax plan' in doc
    for topology in ('v5e:4x4', 'v4:2x2x2'):
        assert topology in doc, topology
    assert 'GiB' in doc and re.search(r'epoch\s+>=', doc)


def test_default_buckets_hold_every_size_the_recipe_makes(caplog):
    """A 16:9 portrait photo is resized to 1333x750 (short side 800 would
    make its long side 1422): the defaults have a bucket for it, and
    buckets that lack one are warned about, with the bucket to add."""
    from detr_jax.config_defaults import base_config, validate_config
    from detr_jax.data.transforms import choose_bucket, eval_resize_params
    c = base_config()
    with caplog.at_level('WARNING'):
        validate_config(c, num_devices=1)
    assert 'no bucket holds' not in caplog.text
    size = eval_resize_params(1920, 1080, c.data).size
    assert size == (1333, 750) and choose_bucket(*size, c.data.eval_buckets) == (1344, 800)
    c.data.eval_buckets = tuple(b for b in c.data.eval_buckets if b != (1344, 800))
    with caplog.at_level('WARNING'):
        validate_config(c, num_devices=1)
    assert 'config.data.eval_buckets: no bucket holds a portrait image' in caplog.text
    assert 'Add (1344, 800)' in caplog.text


def test_demo_trains_the_originals_decoder_and_keeps_the_conditional_one_a_suffix_away():
    """configs/demo.py trains DETR's own decoder (the architecture official
    checkpoints use) with training-only query groups; `:conditional` is the
    demo until 12-04; any other suffix is refused, naming the file."""
    demo = _config_module(os.path.join(ROOT, 'configs', 'demo.py'))
    c = demo.get_config()
    assert not c.model.conditional and c.model.num_groups == 4 and c.optim.lr == 7e-4
    cond = demo.get_config('conditional')
    validate_model_config(cond.model)
    assert cond.model.conditional and cond.model.num_groups == 1
    assert (cond.optim.lr, cond.train.max_steps) == (5e-4, 20000)
    with pytest.raises(ValueError, match=r"configs/demo.py:detr2: the decoder is 'detr'"):
        demo.get_config('detr2')
