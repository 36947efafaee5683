"""ResNet backbones as the original builds them from torchvision.

Channels-last. Parameter names follow torchvision (`conv1`, `bn1`,
`layer{s}_{b}`, `downsample_0/1`) so that converted checkpoints map one to one.
"""
from typing import Sequence

import flax.linen as nn
import jax

from detr_jax.models.layers import TorchConv, make_norm, max_pool, zero_padding

# name -> (block, blocks per stage, base width or the 4 stages' widths)
RESNETS = {
    'resnet18': ('basic', (2, 2, 2, 2), 64),
    'resnet34': ('basic', (3, 4, 6, 3), 64),
    'resnet50': ('bottleneck', (3, 4, 6, 3), 64),
    'resnet101': ('bottleneck', (3, 4, 23, 3), 64),
    'resnet_tiny': ('basic', (1, 1, 1, 1), 8),  # for tests and the demo
    'resnet_tiny_bottleneck': ('bottleneck', (1, 1, 1, 1), 8),  # tests
    'resnet_small': ('basic', (1, 1, 1, 1), 32),  # the CPU demo
    'resnet_small16': ('basic', (1, 1, 1, 1), 16),
    # stride-8 demo backbones: layer3/layer4 at 4x the pixels, so narrower
    'resnet_small16_w64': ('basic', (1, 1, 1, 1), (16, 32, 64, 64)),
    'resnet_small16_w48': ('basic', (1, 1, 1, 1), (16, 32, 48, 48)),
    'resnet_small16_w32': ('basic', (1, 1, 1, 1), (16, 32, 32, 32)),
}
STAGES = ('stem', 'layer1', 'layer2', 'layer3', 'layer4')


def stage_channels(name):
    """Output channels of layer1..layer4 for a backbone name."""
    block, _, width = RESNETS[name]
    expansion = 4 if block == 'bottleneck' else 1
    return tuple(w * expansion for w in stage_widths(width))


def stage_widths(width):
    """The planes of layer1..layer4: `width` doubling per stage (torchvision),
    or the 4 widths given."""
    if isinstance(width, int):
        return tuple(width * 2 ** i for i in range(4))
    if len(width) != 4:
        raise ValueError(f'a ResNet needs 4 stage widths, got {width}')
    return tuple(width)


def _kaiming_fan_out():
    # torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu')
    return nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class _Block(nn.Module):
    planes: int
    bottleneck: bool
    norm: str
    dtype: object
    stride: int = 1
    dilation: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x, train=False, pixel_mask=None):
        conv = lambda f, k, s=1, p=0, d=1, name=None: TorchConv(  # noqa: E731
            f, k, stride=s, padding=p, dilation=d, use_bias=False,
            kernel_init=_kaiming_fan_out(), dtype=self.dtype, name=name)
        def norm(name, y):
            return make_norm(self.norm, self.dtype, name)(y, train, pixel_mask)
        d = self.dilation
        if self.bottleneck:
            out = nn.relu(norm('bn1', conv(self.planes, 1, name='conv1')(x)))
            out = conv(self.planes, 3, self.stride, d, d, name='conv2')(out)
            out = nn.relu(norm('bn2', out))
            out = norm('bn3', conv(self.planes * 4, 1, name='conv3')(out))
            out_ch = self.planes * 4
        else:
            out = conv(self.planes, 3, self.stride, d, d, name='conv1')(x)
            out = nn.relu(norm('bn1', out))
            out = norm('bn2', conv(self.planes, 3, 1, d, d, name='conv2')(out))
            out_ch = self.planes
        if self.downsample:
            x = conv(out_ch, 1, self.stride, name='downsample_0')(x)
            x = norm('downsample_1', x)
        return nn.relu(out + x)


class ResNet(nn.Module):
    """torchvision's ResNet v1.5 (stride on the 3x3 conv), no classifier.

    Returns the outputs of layer1..layer4 as a list (strides 4, 8, 16, 32; with
    `dilation`, layer4 keeps stride 16 and dilates its 3x3 convs, as
    torchvision's `replace_stride_with_dilation=[False, False, True]`; with
    `dilation_layer3` as well, layer3 and layer4 keep stride 8,
    `[False, True, True]`).
    """
    block: str  # 'bottleneck' | 'basic'
    stage_sizes: Sequence[int]
    width: int | tuple  # the stem's and layer1's; or the 4 stages' widths
    dilation: bool
    dilation_layer3: bool
    norm: str
    # Leading stages outside `train_stages` get no gradient at all (their
    # output is a stop_gradient), as the original's requires_grad=False:
    # the backward pass through the stem and layer1 at full resolution is
    # the most expensive part of a step and would be thrown away.
    train_stages: Sequence[str]
    dtype: object

    @nn.compact
    def __call__(self, x, train=False, pixel_mask=None):
        """`pixel_mask` [B, H, W] (True on real pixels) is for the 'bn' and
        'gn' norms, whose statistics leave padding out (`make_norm`)."""
        frozen = 0  # how many leading stages are frozen
        while frozen < len(STAGES) and STAGES[frozen] not in self.train_stages:
            frozen += 1
        bottleneck = self.block == 'bottleneck'
        expansion = 4 if bottleneck else 1
        widths = stage_widths(self.width)
        x = TorchConv(widths[0], 7, stride=2, padding=3, use_bias=False,
                      kernel_init=_kaiming_fan_out(), dtype=self.dtype,
                      name='conv1')(x)
        x = nn.relu(make_norm(self.norm, self.dtype, 'bn1')(x, train, pixel_mask))
        x = max_pool(x, 3, 2, 1)
        if self.norm != 'frozen_bn':  # windows at the border reach real pixels: re-zero padding
            x = zero_padding(x, pixel_mask)
        if frozen >= 1:
            x = jax.lax.stop_gradient(x)
        in_ch, cur_dilation, outs = widths[0], 1, []
        for s, n_blocks in enumerate(self.stage_sizes):
            planes = widths[s]
            stride = 1 if s == 0 else 2
            prev_dilation = cur_dilation
            if (s == 3 and self.dilation) or (s == 2 and self.dilation and self.dilation_layer3):
                cur_dilation *= stride
                stride = 1
            for b in range(n_blocks):
                x = _Block(
                    planes, bottleneck,
                    stride=stride if b == 0 else 1,
                    dilation=prev_dilation if b == 0 else cur_dilation,
                    downsample=b == 0 and (stride != 1 or in_ch != planes * expansion),
                    norm=self.norm, dtype=self.dtype,
                    name=f'layer{s + 1}_{b}')(x, train, pixel_mask)
                in_ch = planes * expansion
            if frozen >= s + 2:
                x = jax.lax.stop_gradient(x)
            outs.append(x)
        return outs


def build_resnet(name, *, dilation, dilation_layer3, norm, train_stages, dtype):
    """The ResNet `name` (a key of RESNETS); the other arguments are the
    `config.model` keys of the same names (`default_model_config`)."""
    if name not in RESNETS:
        raise ValueError(f'model.backbone must be one of {sorted(RESNETS)}, got {name!r}')
    block, sizes, width = RESNETS[name]
    return ResNet(block=block, stage_sizes=sizes, width=width, dilation=dilation,
                  dilation_layer3=dilation_layer3,
                  norm=norm, train_stages=tuple(train_stages), dtype=dtype, name='backbone')
