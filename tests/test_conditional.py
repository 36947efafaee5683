"""Conditional DETR's decoder (`model.conditional`): parity with Hugging Face
`transformers`' ConditionalDetrForObjectDetection (random weights, native
ResNet backbone), and training on it."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import ConditionalDetrConfig, ConditionalDetrForObjectDetection

from detr_jax import convert
from detr_jax.models import build_model, default_model_config
from detr_jax.models.transformer import point_sine_embed
from detr_jax.postprocess import detections
from tests.test_hf_parity import _inputs, _randomize, _tiny_resnet

def _hf_conditional(seed=7, num_labels=6, auxiliary_loss=False):
    # with auxiliary_loss, HF feeds each decoder layer the normed output of
    # the previous one; the original (and we) do not
    return _randomize(ConditionalDetrForObjectDetection(ConditionalDetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=_tiny_resnet(),
        d_model=64,
        encoder_layers=1, decoder_layers=3, encoder_attention_heads=8, decoder_attention_heads=8,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=7, num_labels=num_labels,
        auxiliary_loss=auxiliary_loss)), seed=seed)


# transformers 5.x's names -> the hub's historical layout (what
# microsoft/conditional-detr-resnet-50 holds; transformers' own
# conversion_mapping renames these on load): the decoder's first, then all
_HUB_NAMES = [
    (r'\.self_attn\.([qk])_(content|pos)_proj\.', r'.sa_\1\2_proj.'),
    (r'\.self_attn\.v_proj\.', '.sa_v_proj.'),
    (r'\.encoder_attn\.([qk])_(content|pos)_proj\.', r'.ca_\1\2_proj.'),
    (r'\.encoder_attn\.q_pos_sine_proj\.', '.ca_qpos_sine_proj.'),
    (r'\.encoder_attn\.v_proj\.', '.ca_v_proj.'),
    (r'\.o_proj\.', '.out_proj.'),
    (r'\.mlp\.fc', '.fc'),
    (r'^model\.backbone\.model\.', 'model.backbone.conv_encoder.model.'),
]


@pytest.mark.parametrize('layout', ['transformers5', 'hub'])
def test_hf_conditional_detr_converts_with_parity(tmp_path, layout):
    hf = _hf_conditional()
    x, pm = _inputs()
    with torch.no_grad():
        ref = hf(pixel_values=x, pixel_mask=pm)
    if layout == 'transformers5':
        hf.save_pretrained(tmp_path)
    else:
        sd = {}
        for k, v in hf.state_dict().items():
            for pat, rep in _HUB_NAMES[:5] if k.startswith('model.decoder.') else []:
                k = re.sub(pat, rep, k)
            for pat, rep in _HUB_NAMES[5:]:
                k = re.sub(pat, rep, k)
            sd[k] = v
        assert any('sa_qcontent_proj' in k for k in sd) and any('out_proj' in k for k in sd)
        hf.config.save_pretrained(tmp_path)
        torch.save(sd, tmp_path / 'pytorch_model.bin')
    cfg, variables = convert.load_checkpoint(tmp_path)
    assert cfg.conditional and cfg.class_head == 'sigmoid' and cfg.detections == 'top_pairs'
    assert cfg.num_classes == 6 and cfg.num_queries == 7 and cfg.dec_layers == 3
    model = build_model(cfg)
    out = model.apply(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
                      jnp.asarray(pm.numpy().astype(bool)))
    np.testing.assert_allclose(out['pred_boxes'], ref.pred_boxes.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(out['pred_logits'], ref.logits.numpy(), atol=1e-4, rtol=0)
    # the reference points spread the boxes: not all near the image centre
    assert np.ptp(np.asarray(out['pred_boxes'])[..., :2]) > 0.1
    # the detections as Conditional DETR reads them: sigmoid scores of the
    # best query x class pairs
    dets = detections(out, jnp.asarray([[96, 128], [64, 96]]), cfg.detections, cfg.class_head)
    prob = 1 / (1 + np.exp(-ref.logits.numpy()))
    best = -np.sort(-prob.reshape(2, -1), axis=1)[:, :7]
    np.testing.assert_allclose(dets['scores'], best, atol=1e-5)


def test_a_converted_conditional_detr_fine_tunes(tmp_path):
    """The sigmoid head trains with Conditional DETR's focal loss and focal
    matching cost: the loss falls on a fixed batch, through the trainer."""
    from tests.test_train import _batches, _config, _setup
    hf = _hf_conditional(num_labels=6)
    hf.save_pretrained(tmp_path / 'hf')
    cfg, variables = convert.load_checkpoint(tmp_path / 'hf')
    c = _config(str(tmp_path / 'synthetic'))
    c.model.update({k: v for k, v in cfg.items() if k != 'label_map'})
    c.model.dropout = 0.0
    c.data.max_boxes = 7
    (batch,) = _batches(c, 1)
    state, run, trainer = _setup(c, jax.devices()[:2])
    # the converted weights are what the trainer's state holds, tree for tree
    state = state.replace(
        params=jax.device_put(variables['params'], trainer.state_shardings.params),
        batch_stats=jax.device_put(variables['batch_stats'], trainer.state_shardings.batch_stats))
    losses = []
    for _ in range(30):
        state, m = run(state, batch)
        losses.append(float(m['loss']))
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses


def test_point_sine_embed_is_the_feature_maps_sine_encoding():
    """At a cell centre the reference point's embedding equals the feature
    map's sine encoding there (normalize=True without its 1e-6 and the
    cumsum's half-cell offset aside: cell (i, j) of an h x w map sits at
    ((j + 1) / w, (i + 1) / h))."""
    from detr_jax.models.position_encoding import PositionEmbeddingSine
    h, w, f = 4, 6, 16
    pos = PositionEmbeddingSine(f).apply({}, jnp.ones((1, h, w), bool))[0]
    pts = jnp.stack(jnp.meshgrid((jnp.arange(w) + 1) / w, (jnp.arange(h) + 1) / h), -1)
    np.testing.assert_allclose(point_sine_embed(pts, f), pos, atol=2e-5)


def test_conditional_overfits_a_batch_and_round_trips_through_a_workdir(tmp_path):
    from tests.test_train import _batches, _config, _setup
    from detr_jax import checkpoints, train
    c = _config(str(tmp_path / 'synthetic'))
    c.model.conditional = True
    (batch,) = _batches(c, 1)
    state, run, _ = _setup(c, jax.devices())
    assert 'ref_point_head' in state.params['transformer']
    losses = []
    for _ in range(80):
        state, m = run(state, batch)
        losses.append(float(m['loss']))
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    c.train.max_steps = 2
    train.train_and_evaluate(c, str(tmp_path / 'wd'))
    cfg, variables, step = checkpoints.load_workdir(str(tmp_path / 'wd'))
    assert step == 2 and cfg.model.conditional
    out = build_model(cfg.model).apply(variables, jnp.zeros((1, 96, 96, 3)),
                                       jnp.ones((1, 96, 96), bool))
    assert out['pred_boxes'].shape == (1, 12, 4)


def test_conditional_rejects_pre_norm():
    cfg = default_model_config()
    cfg.update({'conditional': True, 'pre_norm': True})
    with pytest.raises(ValueError, match='config.model.conditional'):
        build_model(cfg)


def test_conditional_takes_the_mask_head():
    """The panoptic demo's model: the conditional detector under `detr`
    gives the detection model's boxes (its reference points included) and
    masks beside them."""
    from tests.tiny_config import get_config
    c = get_config().model
    c.conditional, c.dropout = True, 0.0
    c.hidden_dim, c.nheads = 64, 4  # the demo's width: GroupNorms of gcd(8, channels)
    detector = build_model(c)
    c.masks = True
    panoptic = build_model(c)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 96, 3))
    mask = jnp.ones((2, 64, 96), bool)
    v = panoptic.init(jax.random.PRNGKey(0), x, mask)
    out = panoptic.apply(v, x, mask)
    ref = detector.apply({'params': v['params']['detr'],
                          'batch_stats': v['batch_stats']['detr']}, x, mask)
    for k in ('pred_logits', 'pred_boxes'):
        np.testing.assert_array_equal(out[k], ref[k])
    assert out['pred_masks'].shape == (2, 12, 16, 24)


def test_conditional_with_remat_gives_the_same_values_and_gradients():
    from tests.tiny_config import get_config
    cfgs = []
    for remat in (False, True):
        c = get_config().model
        c.conditional, c.remat, c.dropout = True, remat, 0.0
        cfgs.append(c)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 96, 3))
    mask = jnp.ones((2, 64, 96), bool).at[1, :, 64:].set(False)
    plain, remat = build_model(cfgs[0]), build_model(cfgs[1])
    v = plain.init(jax.random.PRNGKey(0), x, mask)

    def loss(model, params):
        out = model.apply({**v, 'params': params}, x, mask, train=True)
        return jnp.sum(out['pred_boxes'] ** 2) + jnp.sum(out['aux_outputs'][0]['pred_logits'] ** 2)
    a = jax.value_and_grad(lambda p: loss(plain, p))(v['params'])
    b = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(v['params'])
    for x1, x2 in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x1, x2, rtol=1e-4, atol=1e-5)
    assert np.abs(a[1]['transformer']['ref_point_head']['layers_0']['kernel']).max() > 0


def test_sigmoid_head_loss_equals_transformers():
    """The 'sigmoid' class head's set loss (focal matching cost and focal
    loss, Conditional DETR's) on transformers' own outputs equals the loss
    transformers computes for them."""
    from detr_jax.config_defaults import base_config
    from detr_jax.losses import set_criterion
    hf = _hf_conditional()
    hf.train()
    for m in hf.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x, pm = _inputs()
    boxes = [[[.5, .5, .3, .2], [.3, .6, .2, .4]], [[.4, .4, .5, .5]]]
    labels = [[1, 4], [0]]
    with torch.no_grad():
        ref = hf(pixel_values=x, pixel_mask=pm,
                 labels=[{'class_labels': torch.tensor(c), 'boxes': torch.tensor(b)}
                         for c, b in zip(labels, boxes)])
    out = {'pred_logits': jnp.asarray(ref.logits.numpy()),
           'pred_boxes': jnp.asarray(ref.pred_boxes.numpy())}
    c = base_config()
    c.model.class_head = 'sigmoid'
    c.matcher.cost_class = hf.config.class_cost
    targets = {'labels': jnp.array([[1, 4], [0, 0]]),
               'boxes': jnp.array([boxes[0], boxes[1] + [[0, 0, 0, 0]]]),
               'valid': jnp.array([[1, 1], [1, 0]], bool)}
    _, metrics = set_criterion(out, targets, c)
    for k in ('loss_ce', 'loss_bbox', 'loss_giou', 'cardinality_error'):
        np.testing.assert_allclose(float(metrics[k]), float(ref.loss_dict[k]), rtol=1e-5,
                                   err_msg=k)
