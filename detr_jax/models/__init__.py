"""Model construction from a config: `build_model(config.model)`."""
import jax
import jax.numpy as jnp
import ml_collections

from detr_jax.models.backbone import RESNETS
from detr_jax.models.detr import DETR
from detr_jax.models.segmentation import DETRPanoptic

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def default_model_config():
    """The paper's DETR-R50 (detection); configs start from this."""
    return ml_collections.ConfigDict(dict(
        backbone='resnet50',
        dilation=False,
        # with `dilation`, also dilate layer3 (stride 8, torchvision's
        # replace_stride_with_dilation=[False, True, True]): 4x the feature
        # cells of DC5, for small inputs (the CPU demo)
        dilation_layer3=False,
        norm='frozen_bn',
        # Which backbone stages the optimizer updates (the original: all but
        # the stem and layer1). Stages not listed keep their values exactly.
        train_stages=('layer2', 'layer3', 'layer4'),
        position_embedding='sine',
        hidden_dim=256,
        nheads=8,
        enc_layers=6,
        dec_layers=6,
        dim_feedforward=2048,
        dropout=0.1,
        pre_norm=False,
        num_queries=100,
        num_classes=91,
        aux_loss=True,
        masks=False,
        dtype='float32',
        remat=False,
        # Conditional DETR's decoder (Meng et al., 2021): a reference point
        # per query, cross-attention over [content | spatial] per head, boxes
        # predicted around the reference points. Not the original DETR; the
        # CPU demo uses it (docs/experiments.md). Post-norm only.
        conditional=False,
        # Training-only boosters (models/boosters.py); the model evaluates
        # and exports as plain DETR. Group DETR (Chen et al., 2022): this
        # many groups of `num_queries` queries while training, each matched
        # one-to-one on its own (1: off).
        num_groups=1,
        # DN-DETR (Li et al., 2022): this many groups of denoising queries
        # (every target, noised) trained to reconstruct their targets without
        # matching (0: off); box noise scale and label flip rate
        dn_groups=0,
        dn_box_noise=0.4,
        dn_label_noise=0.2,
        # how detections are read off the heads (postprocess.detections):
        # 'best_class' (the original's: each query's best class) or
        # 'top_pairs' (the best query x class pairs, Deformable/Conditional
        # DETR's); evaluation and inference both use it
        detections='best_class',
        # the classifier: 'softmax' (the original's: num_classes + 1 logits,
        # the last "no object"; cross-entropy) or 'sigmoid' (Conditional
        # DETR's: num_classes logits, each a sigmoid; focal loss and focal
        # matching cost, no "no object" class). Converted Conditional DETR
        # checkpoints have 'sigmoid'.
        class_head='softmax',
    ))


def validate_model_config(cfg):
    """Raises ValueError naming the key for an inconsistent model config."""
    def bad(key, msg):
        raise ValueError(f'config.model.{key}={cfg.get(key)!r}: {msg}')
    if cfg.backbone not in RESNETS:
        bad('backbone', f'must be one of {sorted(RESNETS)}')
    if cfg.norm not in ('frozen_bn', 'bn', 'gn'):
        bad('norm', "must be 'frozen_bn', 'bn' or 'gn'")
    if cfg.position_embedding not in ('sine', 'learned'):
        bad('position_embedding', "must be 'sine' or 'learned'")
    if cfg.hidden_dim % cfg.nheads:
        bad('hidden_dim', f'must be divisible by nheads={cfg.nheads}')
    if cfg.hidden_dim % 2:
        bad('hidden_dim', 'must be even (half the channels encode y, half x)')
    if cfg.masks and cfg.hidden_dim % 16:
        bad('hidden_dim', 'the mask head needs a multiple of 16 (its last layers have '
            'hidden_dim/8 and hidden_dim/16 channels)')
    if cfg.conditional and cfg.pre_norm:
        bad('conditional', 'the conditional decoder is post-norm (pre_norm=False) only')
    if int(cfg.num_groups) < 1:
        bad('num_groups', 'must be >= 1 (1: no Group DETR)')
    if int(cfg.dn_groups) < 0:
        bad('dn_groups', 'must be >= 0 (0: no denoising queries)')
    if not 0.0 <= cfg.dn_label_noise <= 1.0:
        bad('dn_label_noise', 'must be in [0, 1]')
    if cfg.dn_box_noise < 0:
        bad('dn_box_noise', 'must be >= 0')
    if cfg.masks and (cfg.num_groups > 1 or cfg.dn_groups > 0):
        bad('masks', 'the training boosters (num_groups > 1, dn_groups > 0) are for '
            'detection training; train the panoptic mask head without them')
    if cfg.class_head not in ('softmax', 'sigmoid'):
        bad('class_head', "must be 'softmax' or 'sigmoid'")
    if cfg.masks and cfg.class_head != 'softmax':
        bad('class_head', "the panoptic post-processing needs the 'softmax' head")
    if cfg.detections not in ('best_class', 'top_pairs'):
        bad('detections', "must be 'best_class' or 'top_pairs'")
    if cfg.dtype not in _DTYPES:
        bad('dtype', f'must be one of {sorted(_DTYPES)}')
    for key in ('num_queries', 'num_classes', 'enc_layers', 'dec_layers', 'dim_feedforward'):
        if int(cfg[key]) < (0 if key == 'enc_layers' else 1):
            bad(key, 'must be positive')
    unknown = set(cfg.train_stages) - {'stem', 'layer1', 'layer2', 'layer3', 'layer4'}
    if unknown:
        bad('train_stages', f'unknown stages {sorted(unknown)}')
    if not 0.0 <= cfg.dropout < 1.0:
        bad('dropout', 'must be in [0, 1)')
    if cfg.dilation_layer3 and not cfg.dilation:
        bad('dilation_layer3', 'needs model.dilation=True (layer4 dilated too)')


def feature_stride(cfg):
    if cfg.dilation:
        return 8 if cfg.dilation_layer3 else 16
    return 32


def validate_image_size(cfg, height, width, where='image'):
    """Image sizes must be multiples of 32 and fit the learned positions."""
    if height % 32 or width % 32:
        raise ValueError(f'{where} size {height}x{width} must be a multiple of 32')
    stride = feature_stride(cfg)
    if cfg.position_embedding == 'learned' and max(height, width) > 50 * stride:
        raise ValueError(
            f'{where} size {height}x{width} gives a feature map over 50 cells, the most '
            f'learned positions cover (max {50 * stride} pixels at stride {stride})')


def abstract_variables(model, size=64):
    """The model's variables as ShapeDtypeStructs (no compute, no memory):
    the template checkpoints are read into. Shapes do not depend on `size`."""
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                          jnp.ones((1, size, size), bool))


def full_model_config(cfg):
    """`cfg` (a `config.model` ConfigDict or dict, possibly written before
    a key existed, e.g. a stored checkpoint config) over the defaults; a
    `label_map` entry (checkpoint readers add it) is not a hyperparameter."""
    full = default_model_config()
    full.update({k: v for k, v in dict(cfg).items() if k != 'label_map'})
    return full


def build_model(cfg, freeze_detr=False):
    """The Flax module for `cfg` (a `config.model` ConfigDict or dict; keys
    it lacks take `default_model_config`'s values). `freeze_detr`
    (panoptic models, `config.train.freeze_detr`): no gradient reaches the
    detector."""
    cfg = full_model_config(cfg)
    validate_model_config(cfg)
    detr = DETR(
        num_classes=cfg.num_classes, num_queries=cfg.num_queries, hidden_dim=cfg.hidden_dim,
        nheads=cfg.nheads, enc_layers=cfg.enc_layers, dec_layers=cfg.dec_layers,
        dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout, pre_norm=cfg.pre_norm,
        backbone=cfg.backbone, dilation=cfg.dilation, dilation_layer3=cfg.dilation_layer3,
        norm=cfg.norm, position_embedding=cfg.position_embedding, aux_loss=cfg.aux_loss,
        remat=cfg.remat, train_stages=tuple(cfg.train_stages), conditional=cfg.conditional,
        dtype=_DTYPES[cfg.dtype], num_groups=int(cfg.num_groups), dn_groups=int(cfg.dn_groups),
        dn_box_noise=float(cfg.dn_box_noise), dn_label_noise=float(cfg.dn_label_noise),
        class_head=cfg.class_head)
    return DETRPanoptic(detr=detr, freeze_detr=freeze_detr) if cfg.masks else detr
