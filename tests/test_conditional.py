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
from tests.test_hf_parity import _inputs, _randomize, _tiny_resnet

# HF decoder names -> ours (under `transformer.`, as `convert.torch_key` spells them)
_DECODER = [
    (r'^model\.decoder\.layers\.(\d+)\.self_attn\.([qk])_(content|pos)_proj\.', r'decoder.layers.\1.sa_\2\3.'),
    (r'^model\.decoder\.layers\.(\d+)\.self_attn\.v_proj\.', r'decoder.layers.\1.sa_v.'),
    (r'^model\.decoder\.layers\.(\d+)\.self_attn\.o_proj\.', r'decoder.layers.\1.sa_out.'),
    (r'^model\.decoder\.layers\.(\d+)\.encoder_attn\.([qk])_(content|pos)_proj\.', r'decoder.layers.\1.ca_\2\3.'),
    (r'^model\.decoder\.layers\.(\d+)\.encoder_attn\.q_pos_sine_proj\.', r'decoder.layers.\1.ca_qpos_sine.'),
    (r'^model\.decoder\.layers\.(\d+)\.encoder_attn\.v_proj\.', r'decoder.layers.\1.ca_v.'),
    (r'^model\.decoder\.layers\.(\d+)\.encoder_attn\.o_proj\.', r'decoder.layers.\1.ca_out.'),
    (r'^model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.', r'decoder.layers.\1.norm1.'),
    (r'^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.', r'decoder.layers.\1.norm2.'),
    (r'^model\.decoder\.layers\.(\d+)\.final_layer_norm\.', r'decoder.layers.\1.norm3.'),
    (r'^model\.decoder\.layers\.(\d+)\.mlp\.fc(\d)\.', r'decoder.layers.\1.linear\2.'),
    (r'^model\.decoder\.layernorm\.', 'decoder.norm.'),
    (r'^model\.decoder\.(query_scale|ref_point_head)\.', r'\1.'),
]


def _ours_from_hf(hf_sd, num_classes, **model_overrides):
    """Our variables from a HF Conditional DETR state dict: the decoder renamed
    here, everything else through `convert.hf_to_original`."""
    rest, sd = {}, {}
    for k, v in hf_sd.items():
        v = v.numpy()
        if k.startswith('model.decoder.'):
            new = k
            for pat, rep in _DECODER:
                if re.match(pat, k):
                    new = re.sub(pat, rep, k)
                    break
            assert new != k, k
            sd['transformer.' + new] = v
        else:
            rest[k] = v
    sd.update(convert.hf_to_original(rest))
    cfg = default_model_config()
    cfg.update(dict(backbone='resnet_tiny', hidden_dim=64, nheads=8, enc_layers=1, dec_layers=3,
                    dim_feedforward=32, dropout=0.0, num_queries=7, num_classes=num_classes,
                    conditional=True, train_stages=()), **model_overrides)
    model = build_model(cfg)
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)),
                              jnp.ones((1, 64, 64), bool))
    return model, convert.variables_from_state_dict(sd, template, 'hf conditional')


def test_conditional_decoder_matches_transformers():
    # num_labels=6: HF's sigmoid classifier has 6 outputs, ours num_classes + 1
    hf_cfg = ConditionalDetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=_tiny_resnet(),
        d_model=64,
        encoder_layers=1, decoder_layers=3, encoder_attention_heads=8, decoder_attention_heads=8,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=7, num_labels=6,
        # with auxiliary_loss, HF feeds each decoder layer the normed output of
        # the previous one; the original (and we) do not
        auxiliary_loss=False)
    hf = _randomize(ConditionalDetrForObjectDetection(hf_cfg), seed=7)
    x, pm = _inputs()
    with torch.no_grad():
        ref = hf(pixel_values=x, pixel_mask=pm)
    model, variables = _ours_from_hf(hf.state_dict(), num_classes=5)
    out = model.apply(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
                      jnp.asarray(pm.numpy().astype(bool)))
    np.testing.assert_allclose(out['pred_boxes'], ref.pred_boxes.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(out['pred_logits'], ref.logits.numpy(), atol=1e-4, rtol=0)
    # the reference points spread the boxes: not all near the image centre
    assert np.ptp(np.asarray(out['pred_boxes'])[..., :2]) > 0.1


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


def test_converting_a_conditional_detr_checkpoint_is_a_clear_error(tmp_path):
    hf = ConditionalDetrForObjectDetection(ConditionalDetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=_tiny_resnet(),
        d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=5, num_labels=3))
    hf.save_pretrained(tmp_path)
    with pytest.raises(convert.CheckpointError,
                       match='model.safetensors: a Conditional DETR checkpoint'):
        convert.load_checkpoint(tmp_path)
