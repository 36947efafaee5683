"""The DETR detector: backbone -> input projection -> transformer -> heads."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from detr_jax.models.backbone import build_resnet
from detr_jax.models.boosters import TrainingQueries, boosted, split_outputs
from detr_jax.models.layers import TorchConv, TorchDense, nearest_resize
from detr_jax.models.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from detr_jax.models.transformer import Transformer


class MLP(nn.Module):
    """The box head: `num_layers` Linear layers with ReLU between them."""
    hidden_dim: int
    output_dim: int
    num_layers: int
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = TorchDense(self.output_dim if last else self.hidden_dim,
                           dtype=self.dtype, name=f'layers_{i}')(x)
            x = x if last else nn.relu(x)
        return x


def feature_mask(pixel_mask, hw):
    """The padding mask at a feature map's size (PyTorch's legacy nearest)."""
    return nearest_resize(pixel_mask, hw)


class DETR(nn.Module):
    """DEtection TRansformer.

    `__call__(images, pixel_mask, train)`: `images` [B, H, W, 3] normalized
    float (padding 0), `pixel_mask` [B, H, W] True on real pixels. Returns
    `pred_logits` [B, Q, C+1] (last = no object; [B, Q, C] with the
    'sigmoid' `class_head`, Conditional DETR's), `pred_boxes` [B, Q, 4]
    (cx, cy, w, h in [0, 1] of the unpadded image) and, with `aux_loss`,
    `aux_outputs`: one such dict per earlier decoder layer. Outputs are
    float32 whatever the compute `dtype`.

    Training-only boosters (`num_groups` > 1: Group DETR; `dn_groups` > 0:
    denoising queries, which need `targets`): with `train=True` the outputs
    also hold `group_outputs` and `dn_outputs` (`boosters.split_outputs`);
    with `train=False` they do not exist and the model is the plain DETR.

    The fields are `config.model`'s keys; `models.build_model` fills them
    from `default_model_config` (their one set of defaults).
    """
    num_classes: int
    num_queries: int
    hidden_dim: int
    nheads: int
    enc_layers: int
    dec_layers: int
    dim_feedforward: int
    dropout: float
    pre_norm: bool
    backbone: str
    dilation: bool
    dilation_layer3: bool
    norm: str
    position_embedding: str
    aux_loss: bool
    remat: bool
    train_stages: tuple
    conditional: bool
    dtype: object
    num_groups: int = 1
    dn_groups: int = 0
    dn_box_noise: float = 0.4
    dn_label_noise: float = 0.2
    class_head: str = 'softmax'

    def setup(self):
        self.body = build_resnet(self.backbone, dilation=self.dilation,
                                 dilation_layer3=self.dilation_layer3, norm=self.norm,
                                 train_stages=self.train_stages, dtype=self.dtype)
        if self.position_embedding == 'sine':
            self.pos_embed = PositionEmbeddingSine(self.hidden_dim // 2)
        else:
            self.pos_embed = PositionEmbeddingLearned(self.hidden_dim // 2)
        self.input_proj = TorchConv(self.hidden_dim, 1, dtype=self.dtype)
        self.query_embed = self.param('query_embed', nn.initializers.normal(1.0),
                                      (self.num_queries, self.hidden_dim))
        self.transformer = Transformer(
            self.hidden_dim, self.nheads, self.enc_layers, self.dec_layers,
            self.dim_feedforward, self.dropout, self.pre_norm, self.remat, self.conditional,
            self.dtype)
        if self.class_head == 'sigmoid':
            # Conditional DETR's focal-loss prior: every class starts at p = 0.01
            self.class_embed = TorchDense(self.num_classes, dtype=self.dtype,
                                          bias_init=nn.initializers.constant(-np.log(99.0)))
        else:
            self.class_embed = TorchDense(self.num_classes + 1, dtype=self.dtype)
        self.bbox_embed = MLP(self.hidden_dim, 4, 3, dtype=self.dtype)
        if boosted(self.num_groups, self.dn_groups):
            self.training_queries = TrainingQueries(
                self.num_queries, self.num_groups, self.dn_groups, self.num_classes,
                self.hidden_dim, self.dn_box_noise, self.dn_label_noise, self.dtype)

    def encode(self, images, pixel_mask, train=False):
        """Everything up to the heads, for DETR and the panoptic model.

        Returns (hs [L, B, Q, D], memory [B, h, w, D], src_proj [B, h, w, D],
        mask [B, h, w] True on real cells, backbone features layer1..layer4).
        """
        return self.encode_with_reference(images, pixel_mask, train)[:5]

    def encode_with_reference(self, images, pixel_mask, train=False, targets=None):
        """`encode`'s values and the conditional decoder's reference points
        [B, Q, 2] (None for DETR's decoder). With boosters and `train`, Q
        covers every training query (`boosters.TrainingQueries`)."""
        feats = self.body(images.astype(self.dtype), train, pixel_mask)
        src = feats[-1]
        b, h, w, _ = src.shape
        mask = feature_mask(pixel_mask, (h, w))
        self.sow('intermediates', 'feature_mask', mask)
        pos = self.pos_embed(mask).astype(self.dtype)
        src_proj = self.input_proj(src)
        queries = None
        if boosted(self.num_groups, self.dn_groups):
            if train:
                if self.dn_groups and targets is None:
                    raise ValueError('model.dn_groups > 0: training needs the targets '
                                     '(apply(..., train=True, targets=...))')
                queries = self.training_queries(
                    self.query_embed, targets if targets is not None else _no_targets(b))
            elif self.is_initializing():  # create the training-only parameters
                self.training_queries(self.query_embed, _no_targets(b), noise=False)
        out = self.transformer(
            src_proj.reshape(b, h * w, -1), mask.reshape(b, h * w), self.query_embed,
            pos.reshape(b, h * w, -1), train, queries)
        hs, memory = out[:2]
        ref = out[2] if self.conditional else None
        return hs, memory.reshape(b, h, w, -1), src_proj, mask, feats, ref

    def heads(self, hs, reference=None):
        """Class logits and boxes of every decoder layer; with `reference`
        (Conditional DETR) the box centres are predicted around it in logit
        space."""
        logits = self.class_embed(hs).astype(jnp.float32)
        box = self.bbox_embed(hs).astype(jnp.float32)
        if reference is not None:
            r = jnp.clip(reference.astype(jnp.float32), 1e-5, 1 - 1e-5)
            box = box.at[..., :2].add(jnp.log(r / (1 - r)))
        boxes = nn.sigmoid(box)
        out = {'pred_logits': logits[-1], 'pred_boxes': boxes[-1]}
        if self.aux_loss:
            out['aux_outputs'] = [{'pred_logits': lg, 'pred_boxes': bx}
                                  for lg, bx in zip(logits[:-1], boxes[:-1])]
        return out

    def __call__(self, images, pixel_mask, train=False, targets=None):
        """`targets` (training with denoising queries only): `labels` [B, M],
        `boxes` [B, M, 4] (cxcywh normalized), `valid` [B, M]."""
        hs, *_, ref = self.encode_with_reference(images, pixel_mask, train, targets)
        out = self.heads(hs, ref)
        if train and boosted(self.num_groups, self.dn_groups):
            out = split_outputs(out, self.num_queries, self.num_groups, self.dn_groups)
        return out


def _no_targets(batch):
    """One padded (invalid) target slot per image: what the denoising
    queries need when there are no targets (initialization)."""
    return {'labels': jnp.zeros((batch, 1), jnp.int32), 'boxes': jnp.zeros((batch, 1, 4)),
            'valid': jnp.zeros((batch, 1), bool)}


