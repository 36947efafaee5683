"""Parity with Hugging Face `transformers` DETR (random weights, native ResNet
backbone), loaded through `detr_jax.convert`."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import DetrConfig, DetrForObjectDetection, DetrForSegmentation, ResNetConfig

from detr_jax import convert
from detr_jax.models import build_model


def _tiny_resnet(layer_type='basic'):
    """HF's native ResNet, one block per stage: our resnet_tiny(_bottleneck)."""
    sizes = [8, 16, 32, 64] if layer_type == 'basic' else [32, 64, 128, 256]
    return ResNetConfig(depths=[1, 1, 1, 1], hidden_sizes=sizes, embedding_size=8,
                        layer_type=layer_type,
                        out_features=['stage1', 'stage2', 'stage3', 'stage4'])


def _hf_config(layer_type='basic'):
    return DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False,
                      backbone_config=_tiny_resnet(layer_type),
                      d_model=128, encoder_layers=2, decoder_layers=3, encoder_attention_heads=8,
                      decoder_attention_heads=8, encoder_ffn_dim=64, decoder_ffn_dim=64,
                      num_queries=7, num_labels=5,
                      # With auxiliary_loss=True, transformers feeds each decoder layer the
                      # *normed* output of the previous one (the original does not), so HF
                      # matches the original DETR only without it.
                      auxiliary_loss=False)


def _randomize(model, seed=0):
    """Random values for every parameter and buffer (BN statistics too), so
    that a wrong mapping of any tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith('running_var'):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith('weight') and t.ndim == 1:
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) / max(1, t[0].numel()) ** 0.5)
    return model.eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 96, 128, generator=g)
    pm = torch.ones(2, 96, 128, dtype=torch.long)
    pm[1, 64:, :] = 0
    pm[1, :, 96:] = 0
    x = x * pm[:, None]
    return x, pm


def _ours(path, x, pm, **overrides):
    cfg, variables = convert.load_checkpoint(path, **overrides)
    model = build_model(cfg)
    out = model.apply(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
                      jnp.asarray(pm.numpy().astype(bool)))
    return cfg, out


@pytest.mark.parametrize('fmt', ['safetensors', 'bin'])
@pytest.mark.parametrize('layer_type', ['basic', 'bottleneck'])
def test_detection_parity(tmp_path, fmt, layer_type):
    hf = _randomize(DetrForObjectDetection(_hf_config(layer_type)))
    x, pm = _inputs()
    with torch.no_grad():
        ref = hf(pixel_values=x, pixel_mask=pm)
    hf.save_pretrained(tmp_path, safe_serialization=fmt == 'safetensors')
    cfg, out = _ours(tmp_path, x, pm)
    assert cfg.backbone == {'basic': 'resnet_tiny', 'bottleneck': 'resnet_tiny_bottleneck'}[layer_type]
    assert cfg.num_classes == 5 and cfg.num_queries == 7 and cfg.nheads == 8
    np.testing.assert_allclose(out['pred_logits'], ref.logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(out['pred_boxes'], ref.pred_boxes.numpy(), atol=1e-4, rtol=0)



def test_segmentation_parity(tmp_path):
    hf = _randomize(DetrForSegmentation(_hf_config('bottleneck')), seed=3)
    x, pm = _inputs()
    with torch.no_grad():
        ref = hf(pixel_values=x, pixel_mask=pm)
    hf.save_pretrained(tmp_path)
    cfg, out = _ours(tmp_path, x, pm)
    assert cfg.masks
    np.testing.assert_allclose(out['pred_logits'], ref.logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(out['pred_boxes'], ref.pred_boxes.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(out['pred_masks'], ref.pred_masks.numpy(), atol=1e-4, rtol=0)


def test_historical_hub_names(tmp_path):
    """A state dict renamed to the hub's historical names (conv_encoder,
    out_proj, fc1, lay1, q_linear) loads to the same outputs."""
    hf = _randomize(DetrForSegmentation(_hf_config('basic')), seed=5)
    x, pm = _inputs()
    with torch.no_grad():
        ref = hf(pixel_values=x, pixel_mask=pm)
    renames = [('backbone.model.', 'backbone.conv_encoder.model.'), ('.o_proj.', '.out_proj.'),
               ('.mlp.fc', '.fc'), ('mask_head.conv1.conv.', 'mask_head.lay1.'),
               ('mask_head.conv1.norm.', 'mask_head.gn1.'), ('mask_head.conv2.conv.', 'mask_head.lay2.'),
               ('mask_head.conv2.norm.', 'mask_head.gn2.'), ('mask_head.output_conv.', 'mask_head.out_lay.'),
               ('bbox_attention.q_proj', 'bbox_attention.q_linear'),
               ('bbox_attention.k_proj', 'bbox_attention.k_linear')]
    for i in range(3):
        renames += [(f'mask_head.fpn_stages.{i}.fpn_adapter.', f'mask_head.adapter{i + 1}.'),
                    (f'mask_head.fpn_stages.{i}.refine.conv.', f'mask_head.lay{i + 3}.'),
                    (f'mask_head.fpn_stages.{i}.refine.norm.', f'mask_head.gn{i + 3}.')]
    sd = {}
    for k, v in hf.state_dict().items():
        for a, b in renames:
            k = k.replace(a, b)
        sd[k] = v
    assert any('conv_encoder' in k for k in sd) and any('out_proj' in k for k in sd)
    hf.config.save_pretrained(tmp_path)
    torch.save(sd, tmp_path / 'pytorch_model.bin')
    _, out = _ours(tmp_path, x, pm)
    np.testing.assert_allclose(out['pred_logits'], ref.logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(out['pred_masks'], ref.pred_masks.numpy(), atol=1e-4, rtol=0)
