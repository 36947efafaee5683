"""A tiny detection config for tests (CPU, seconds per run)."""
from detr_jax.config_defaults import base_config


def get_config():
    c = base_config()
    m = c.model
    m.backbone, m.norm, m.dilation = 'resnet_tiny', 'frozen_bn', False
    m.hidden_dim, m.nheads, m.dim_feedforward = 64, 4, 64
    m.enc_layers, m.dec_layers = 1, 2
    m.num_queries, m.num_classes = 12, 6
    m.dropout = 0.1
    d = c.data
    d.dataset, d.num_train, d.num_val = 'synthetic', 48, 16
    d.min_image, d.max_image, d.max_objects = 64, 96, 5
    d.scales, d.max_size = (64, 80), 96
    d.crop_resize, d.crop_min, d.crop_max = (64,), 48, 64
    d.eval_size, d.eval_max_size = 64, 96
    d.buckets = ((96, 96),)
    d.eval_buckets = ((96, 96),)
    d.max_boxes = 8
    d.batch_size, d.eval_batch_size = 8, 8
    c.optim.lr, c.optim.lr_backbone = 1e-3, 1e-4
    t = c.train
    t.max_steps, t.log_every, t.checkpoint_every = 6, 2, 2
    t.eval_every = 0
    return c
