"""Official DETR and Hugging Face checkpoints -> Flax variables.

`load_checkpoint(path, **overrides) -> (model_config, variables)` reads:
- the original's `.pth` files (detection or panoptic, `{'model': ...}` with or
  without optimizer/args, fp32 or fp16, zip or legacy serialization), without
  torch (`detr_jax.pth_reader`);
- Hugging Face DETR: a `save_pretrained` directory, `model.safetensors` or
  `pytorch_model.bin`, with the hub's historical key names or those of
  `transformers` 5.x, native or timm ResNet backbones;
- Hugging Face Conditional DETR (`ConditionalDetrForObjectDetection`, both
  key layouts) into `model.conditional` with its sigmoid classifier
  (`model.class_head='sigmoid'`, detections 'top_pairs' as it reads them).

Every checkpoint is first brought to the original's key names; then each of
our variables names the key it comes from, so a missing, unexpected or
wrongly shaped tensor is an error that lists it.
"""
import json
import os
import re
import sys

import jax
import ml_collections
import numpy as np

from detr_jax.coco_categories import coco_label_map
from detr_jax.models import abstract_variables, build_model, default_model_config
from detr_jax.models.backbone import RESNETS
from detr_jax.pth_reader import CheckpointError, load_pth

# --- our variable paths <-> the original's state-dict keys -------------------

_WRAPPERS = {'conv', 'dense', 'ffn', 'bn', 'gn'}
_SEGMENTS = [
    (re.compile(r'^backbone$'), 'backbone.0.body'),
    (re.compile(r'^pos_embed$'), 'backbone.1'),
    (re.compile(r'^layer(\d)_(\d+)$'), r'layer\1.\2'),
    (re.compile(r'^downsample_(\d)$'), r'downsample.\1'),
    (re.compile(r'^(encoder|decoder)_layers_(\d+)$'), r'\1.layers.\2'),
    (re.compile(r'^(encoder|decoder)_norm$'), r'\1.norm'),
    (re.compile(r'^layers_(\d+)$'), r'layers.\1'),
]
_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'in_proj_kernel': 'in_proj_weight',
           'mean': 'running_mean', 'var': 'running_var', 'query_embed': 'query_embed.weight',
           'row_embed': 'row_embed.weight', 'col_embed': 'col_embed.weight'}


def torch_key(path):
    """The original's state-dict key of one of our variables (path without
    its collection), e.g. ('backbone', 'layer1_0', 'conv1', 'conv', 'kernel')
    -> 'backbone.0.body.layer1.0.conv1.weight'."""
    out = []
    for i, seg in enumerate(path):
        last = i == len(path) - 1
        if last:
            out.append(_LEAVES.get(seg, seg))
        elif seg not in _WRAPPERS:
            for pat, rep in _SEGMENTS:
                if pat.match(seg):
                    seg = pat.sub(rep, seg)
                    break
            out.append(seg)
    return '.'.join(out)


def _to_flax(leaf_name, arr):
    if leaf_name == 'kernel' and arr.ndim == 4:
        return arr.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if leaf_name in ('kernel', 'in_proj_kernel'):
        return arr.T  # (out, in) -> (in, out)
    return arr


def _path_names(path):
    return tuple(getattr(p, 'key', getattr(p, 'name', str(p))) for p in path)


def variables_from_state_dict(state_dict, template, source='checkpoint'):
    """Fills `template` (a pytree of arrays or ShapeDtypeStructs with the
    model's variables) from an original-layout state dict."""
    used, missing, wrong, leaves = set(), [], [], []
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    for path, leaf in flat:
        names = _path_names(path)[1:]  # drop the collection
        key = torch_key(names)
        if key not in state_dict:
            missing.append(key)
            leaves.append(None)
            continue
        used.add(key)
        arr = _to_flax(names[-1], np.asarray(state_dict[key]))
        if tuple(arr.shape) != tuple(leaf.shape):
            wrong.append(f'{key}: file {tuple(arr.shape)} vs model {tuple(leaf.shape)}')
        leaves.append(arr.astype(leaf.dtype))
    unexpected = sorted(k for k in state_dict if k not in used
                        and not k.endswith('num_batches_tracked'))
    problems = []
    if missing:
        problems.append(f'missing keys: {", ".join(missing)}')
    if unexpected:
        problems.append(f'unexpected keys: {", ".join(unexpected)}')
    if wrong:
        problems.append(f'wrong shapes: {"; ".join(wrong)}')
    if problems:
        raise CheckpointError(f'{source}: does not fit the model: ' + ' | '.join(problems))
    return jax.tree_util.tree_unflatten(treedef, leaves)


# --- model config from tensors ------------------------------------------------

def _count(keys, prefix):
    pat = re.compile(re.escape(prefix) + r'(\d+)\.')
    return len({m.group(1) for k in keys if (m := pat.match(k))})


def infer_model_config(state_dict, args=None, **overrides):
    """Everything the tensors tell; `args` (the original's argparse
    Namespace or a dict) and `overrides` supply the rest (nheads, dilation)."""
    sd = state_dict
    masks = any(k.startswith('mask_head.') for k in sd)
    p = 'detr.' if masks else ''
    keys = [k[len(p):] for k in sd if k.startswith(p)]
    need = [f'{p}class_embed.weight', f'{p}query_embed.weight']
    for k in need:
        if k not in sd:
            raise CheckpointError(f'missing keys: {k} (is this a DETR checkpoint?)')
    cfg = default_model_config()
    cfg.masks = masks
    if any(k.startswith('transformer.ref_point_head.') for k in keys):
        # Conditional DETR: its decoder, a sigmoid classifier (no "no
        # object" logit) read as the best query x class pairs
        cfg.conditional, cfg.class_head, cfg.detections = True, 'sigmoid', 'top_pairs'
    cfg.num_classes = sd[f'{p}class_embed.weight'].shape[0] - (cfg.class_head == 'softmax')
    cfg.num_queries, cfg.hidden_dim = sd[f'{p}query_embed.weight'].shape
    cfg.enc_layers = _count(keys, 'transformer.encoder.layers.')
    cfg.dec_layers = _count(keys, 'transformer.decoder.layers.')
    ffn_key = next(k for k in keys if k.endswith('linear1.weight'))
    cfg.dim_feedforward = sd[p + ffn_key].shape[0]
    cfg.pre_norm = 'transformer.encoder.norm.weight' in keys
    cfg.position_embedding = 'learned' if 'backbone.1.row_embed.weight' in keys else 'sine'
    body = 'backbone.0.body.'
    bottleneck = f'{body}layer1.0.conv3.weight' in keys
    depth = tuple(_count(keys, f'{body}layer{s}.') for s in range(1, 5))
    width = sd[f'{p}{body}conv1.weight'].shape[0]
    names = [n for n, (blk, sizes, w) in RESNETS.items()
             if (blk == 'bottleneck') == bottleneck and tuple(sizes) == depth and w == width]
    if not names:
        raise CheckpointError(f'unknown backbone: {"bottleneck" if bottleneck else "basic"} '
                              f'blocks {depth}, width {width}')
    cfg.backbone = names[0]
    args = vars(args) if args is not None and not isinstance(args, dict) else (args or {})
    for ours, theirs in (('nheads', 'nheads'), ('dilation', 'dilation'),
                         ('dropout', 'dropout'), ('aux_loss', 'aux_loss')):
        if theirs in args:
            cfg[ours] = args[theirs]
    for k, v in overrides.items():
        if k not in cfg:
            raise CheckpointError(f'unknown override {k!r}; model config keys: {sorted(cfg)}')
        cfg[k] = v
    return cfg


# --- Hugging Face names -> the original's -------------------------------------

_HF_RULES = [
    (r'^(?:model\.)?backbone\.(?:conv_encoder\.)?model\.embedder\.embedder\.convolution\.', 'backbone.0.body.conv1.'),
    (r'^(?:model\.)?backbone\.(?:conv_encoder\.)?model\.embedder\.embedder\.normalization\.', 'backbone.0.body.bn1.'),
    (r'^(?:model\.)?backbone\.(?:conv_encoder\.)?model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.',
     lambda m: f'backbone.0.body.layer{int(m[1]) + 1}.{m[2]}.downsample.0.'),
    (r'^(?:model\.)?backbone\.(?:conv_encoder\.)?model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.',
     lambda m: f'backbone.0.body.layer{int(m[1]) + 1}.{m[2]}.downsample.1.'),
    (r'^(?:model\.)?backbone\.(?:conv_encoder\.)?model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.',
     lambda m: f'backbone.0.body.layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.'),
    (r'^(?:model\.)?backbone\.(?:conv_encoder\.)?model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.',
     lambda m: f'backbone.0.body.layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.'),
    # timm ResNets already use torchvision's names
    (r'^(?:model\.)?backbone\.(?:conv_encoder\.)?model\.', 'backbone.0.body.'),
    (r'^(?:model\.)?backbone\.(?:conv_encoder\.)?position_embedding\.row_embeddings\.', 'backbone.1.row_embed.'),
    (r'^(?:model\.)?backbone\.(?:conv_encoder\.)?position_embedding\.column_embeddings\.', 'backbone.1.col_embed.'),
    (r'^model\.position_embedding\.row_embeddings\.', 'backbone.1.row_embed.'),
    (r'^model\.position_embedding\.column_embeddings\.', 'backbone.1.col_embed.'),
    (r'^model\.input_projection\.', 'input_proj.'),
    (r'^model\.query_position_embeddings\.', 'query_embed.'),
    (r'^model\.decoder\.layernorm\.', 'transformer.decoder.norm.'),
    (r'^model\.encoder\.layernorm\.', 'transformer.encoder.norm.'),
    (r'^model\.(encoder|decoder)\.layers\.', r'transformer.\1.layers.'),
    (r'^class_labels_classifier\.', 'class_embed.'),
    (r'^bbox_predictor\.', 'bbox_embed.'),
    # transformers 5.x mask head (older releases use the original's names)
    (r'^mask_head\.conv([12])\.conv\.', r'mask_head.lay\1.'),
    (r'^mask_head\.conv([12])\.norm\.', r'mask_head.gn\1.'),
    (r'^mask_head\.fpn_stages\.(\d)\.fpn_adapter\.', lambda m: f'mask_head.adapter{int(m[1]) + 1}.'),
    (r'^mask_head\.fpn_stages\.(\d)\.refine\.conv\.', lambda m: f'mask_head.lay{int(m[1]) + 3}.'),
    (r'^mask_head\.fpn_stages\.(\d)\.refine\.norm\.', lambda m: f'mask_head.gn{int(m[1]) + 3}.'),
    (r'^mask_head\.output_conv\.', 'mask_head.out_lay.'),
    (r'^bbox_attention\.([qk])_proj\.', r'bbox_attention.\1_linear.'),
]
# Conditional DETR's decoder (HF, the hub's layout and transformers 5.x's) ->
# our conditional decoder's names (`models.transformer.ConditionalDecoderLayer`)
_HF_CONDITIONAL_LAYER = [  # the part after `model.decoder.layers.N.` -> ours
    (r'(sa|ca)_(qcontent|qpos|kcontent|kpos|v|qpos_sine)_proj', r'\1_\2'),  # the hub's
    (r'self_attn\.([qk])_(content|pos)_proj', r'sa_\1\2'),
    (r'encoder_attn\.([qk])_(content|pos)_proj', r'ca_\1\2'),
    (r'encoder_attn\.q_pos_sine_proj', 'ca_qpos_sine'),
    (r'self_attn\.v_proj', 'sa_v'), (r'encoder_attn\.v_proj', 'ca_v'),
    (r'self_attn\.(?:o|out)_proj', 'sa_out'), (r'encoder_attn\.(?:o|out)_proj', 'ca_out'),
    (r'self_attn_layer_norm', 'norm1'), (r'encoder_attn_layer_norm', 'norm2'),
    (r'final_layer_norm', 'norm3'), (r'(?:mlp\.)?fc([12])', r'linear\1'),
]


def _conditional_decoder_key(key):
    """A HF Conditional DETR decoder key -> our conditional decoder's
    (`torch_key` names under `transformer.`)."""
    m = re.match(r'^model\.decoder\.layers\.(\d+)\.(.+)\.(weight|bias)$', key)
    if m:
        for pat, rep in _HF_CONDITIONAL_LAYER:
            if re.fullmatch(pat, m[2]):
                return f'transformer.decoder.layers.{m[1]}.{re.sub(pat, rep, m[2])}.{m[3]}'
    m = re.match(r'^model\.decoder\.(query_scale|ref_point_head|layernorm)\.(.+)$', key)
    if m:
        return f'transformer.{"decoder.norm" if m[1] == "layernorm" else m[1]}.{m[2]}'
    raise CheckpointError(f'{key}: not a Conditional DETR decoder tensor we know')


# a key only Conditional DETR has
_CONDITIONAL_KEY = re.compile(r'(ref_point_head|q_content_proj|qcontent_proj)')

_HF_LAYER_RULES = [
    (r'\.encoder_attn_layer_norm\.', '.norm2.'),
    (r'\.encoder_attn\.', '.multihead_attn.'),
    (r'\.(self_attn|multihead_attn)\.(?:o_proj|out_proj)\.', r'.\1.out_proj.'),
    (r'\.(?:mlp\.)?fc1\.', '.linear1.'),
    (r'\.(?:mlp\.)?fc2\.', '.linear2.'),
    (r'\.self_attn_layer_norm\.', '.norm1.'),
]


def hf_to_original(hf_sd):
    """Renames a Hugging Face DETR state dict to the original's key names
    (q/k/v projections are concatenated into `in_proj_weight`/`_bias`);
    a Conditional DETR's decoder to our conditional decoder's names."""
    out, qkv = {}, {}
    conditional = any(_CONDITIONAL_KEY.search(k) for k in hf_sd)
    for key, val in hf_sd.items():
        prefix = ''
        if key.startswith('detr.'):
            prefix, key = 'detr.', key[len('detr.'):]
        if conditional and key.startswith('model.decoder.'):
            out[_conditional_decoder_key(key)] = val
            continue
        new = key
        for pat, rep in _HF_RULES:
            if re.match(pat, new):
                new = re.sub(pat, rep, new)
                break
        if new.startswith('transformer.'):
            for pat, rep in _HF_LAYER_RULES:
                new = re.sub(pat, rep, new)
            dec = new.startswith('transformer.decoder.')
            new = re.sub(r'\.final_layer_norm\.', '.norm3.' if dec else '.norm2.', new)
            m = re.match(r'(.*\.(?:self_attn|multihead_attn))\.([qkv])_proj\.(weight|bias)$', new)
            if m:
                qkv.setdefault((prefix + m[1], m[3]), {})[m[2]] = val
                continue
        if key.startswith(('bbox_attention.', 'mask_head.')):
            prefix = ''
        out[prefix + new] = val
    for (base, kind), parts in qkv.items():
        if set(parts) != {'q', 'k', 'v'}:
            raise CheckpointError(f'{base}: q/k/v projection {kind} incomplete: has {sorted(parts)}')
        out[f'{base}.in_proj_{kind}'] = np.concatenate([parts['q'], parts['k'], parts['v']], 0)
    return out


def _read_safetensors(path):
    dtypes = {'F16': np.float16, 'F32': np.float32, 'F64': np.float64, 'I64': np.int64,
              'I32': np.int32, 'U8': np.uint8, 'BOOL': np.bool_}
    with open(path, 'rb') as f:
        data = f.read()
    try:
        n = int.from_bytes(data[:8], 'little')
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f'{path}: not a safetensors file: {e}') from e
    out, base = {}, 8 + n
    for key, info in header.items():
        if key == '__metadata__':
            continue
        if info['dtype'] == 'BF16':
            import ml_dtypes
            dt = np.dtype(ml_dtypes.bfloat16)
        elif info['dtype'] in dtypes:
            dt = np.dtype(dtypes[info['dtype']])
        else:
            raise CheckpointError(f'{path}: {key}: unsupported dtype {info["dtype"]}')
        start, end = info['data_offsets']
        if base + end > len(data):
            raise CheckpointError(f'{path}: truncated at tensor {key}')
        out[key] = np.frombuffer(data[base + start:base + end], dt).reshape(info['shape']).copy()
    return out


def _hf_config_overrides(hf_cfg):
    o = {}
    if 'encoder_attention_heads' in hf_cfg:
        o['nheads'] = hf_cfg['encoder_attention_heads']
    for theirs, ours in (('dilation', 'dilation'), ('normalize_before', 'pre_norm'),
                         ('auxiliary_loss', 'aux_loss'), ('dropout', 'dropout')):
        if theirs in hf_cfg:
            o[ours] = hf_cfg[theirs]
    if 'position_embedding_type' in hf_cfg:
        o['position_embedding'] = 'learned' if hf_cfg['position_embedding_type'] == 'learned' else 'sine'
    return o


def _label_map(num_classes, hf_cfg=None):
    if hf_cfg and hf_cfg.get('id2label'):
        return {int(i): {'id': int(i), 'name': n, 'isthing': True}
                for i, n in hf_cfg['id2label'].items() if n != 'N/A'}
    if num_classes in (91, 250):
        return coco_label_map(num_classes)
    return {i: {'id': i, 'name': str(i), 'isthing': True} for i in range(num_classes)}


def read_state_dict(path):
    """(state dict in the original's names, args dict, HF config or None)."""
    path = str(path)
    hf_cfg = None
    if os.path.isdir(path):
        cfg_path = os.path.join(path, 'config.json')
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                hf_cfg = json.load(f)
        for name in ('model.safetensors', 'pytorch_model.bin'):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise CheckpointError(f'{path}: no model.safetensors or pytorch_model.bin in this directory')
    if not os.path.exists(path):
        raise CheckpointError(f'{path}: no such checkpoint file')
    if path.endswith('.safetensors'):
        raw, args = _read_safetensors(path), {}
    else:
        obj = load_pth(path)
        if isinstance(obj, dict) and 'model' in obj and isinstance(obj['model'], dict):
            raw, args = obj['model'], obj.get('args')
            args = vars(args) if args is not None and not isinstance(args, dict) else (args or {})
        elif isinstance(obj, dict):
            raw, args = obj, {}
        else:
            raise CheckpointError(f'{path}: expected a state dict, got {type(obj).__name__}')
    if not all(isinstance(v, np.ndarray) for v in raw.values()):
        bad = [k for k, v in raw.items() if not isinstance(v, np.ndarray)]
        raise CheckpointError(f'{path}: entries that are not tensors: {bad[:5]}')
    is_hf = any(k.startswith(('model.', 'detr.model.')) for k in raw)
    conditional = [k for k in raw if _CONDITIONAL_KEY.search(k)]
    if conditional and not is_hf:
        raise CheckpointError(f'{path}: a Conditional DETR checkpoint ({conditional[0]}) outside '
                              "Hugging Face's layout; convert it with transformers first "
                              '(ConditionalDetrForObjectDetection.save_pretrained)')
    sd = hf_to_original(raw) if is_hf else raw
    if is_hf and hf_cfg is None and 'nheads' not in args:
        hf_cfg = {}
    return sd, args, hf_cfg, path


def load_checkpoint(path, **overrides):
    """Returns (model_config, variables) for an official or HF checkpoint.

    `overrides` set what the tensors cannot tell (e.g. `dilation=True` for
    DC5, `nheads`), on top of the file's own `args` / HF `config.json`.
    The config carries `label_map` (class index -> id, name, isthing).
    """
    from detr_jax import checkpoints
    if checkpoints.is_converted(str(path)):
        cfg, variables = checkpoints.load_converted(str(path))
        for k, v in overrides.items():
            cfg[k] = v
        return cfg, variables
    sd, args, hf_cfg, src = read_state_dict(path)
    extra = _hf_config_overrides(hf_cfg) if hf_cfg else {}
    extra.update(overrides)
    cfg = infer_model_config(sd, args, **extra)
    template = abstract_variables(build_model(cfg))
    variables = variables_from_state_dict(sd, template, source=src)
    cfg.label_map = ml_collections.ConfigDict(
        {str(k): v for k, v in _label_map(cfg.num_classes, hf_cfg).items()})
    return cfg, variables


# --- published checkpoints ------------------------------------------------------

# The original's releases (README and hubconf of facebookresearch/detr). The
# hex in each file name is the start of the file's sha256, which torch.hub's
# check_hash verifies; we verify the same prefix. COCO val5k results from the
# original's README.
PUBLISHED = {
    'detr_resnet50': dict(file='detr-r50-e632da11.pth', sha256_prefix='e632da11',
                          dilation=False, box_ap=42.0),
    'detr_resnet50_dc5': dict(file='detr-r50-dc5-f0fb7ef5.pth', sha256_prefix='f0fb7ef5',
                              dilation=True, box_ap=43.3),
    'detr_resnet101': dict(file='detr-r101-2c7b67e5.pth', sha256_prefix='2c7b67e5',
                           dilation=False, box_ap=43.5),
    'detr_resnet101_dc5': dict(file='detr-r101-dc5-a2e86def.pth', sha256_prefix='a2e86def',
                               dilation=True, box_ap=44.9),
    'detr_resnet50_panoptic': dict(file='detr-r50-panoptic-00ce5173.pth',
                                   sha256_prefix='00ce5173', dilation=False, box_ap=38.8,
                                   pq=43.4),
    'detr_resnet50_dc5_panoptic': dict(file='detr-r50-dc5-panoptic-da08f1b1.pth',
                                       sha256_prefix='da08f1b1', dilation=True, box_ap=40.2,
                                       pq=44.6),
    'detr_resnet101_panoptic': dict(file='detr-r101-panoptic-40021d53.pth',
                                    sha256_prefix='40021d53', dilation=False, box_ap=40.1,
                                    pq=45.1),
}
DOWNLOAD_BASE = 'https://dl.fbaipublicfiles.com/detr/'


def _sha256(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def from_pretrained(name_or_path, search_dirs=None, **overrides):
    """(model_config, variables) for a published checkpoint name (looked up
    as a local file, its sha256 prefix verified) or any path. Never
    downloads: fetch the file yourself from the URL the error names."""
    entry = PUBLISHED.get(name_or_path)
    if entry is None:
        base = os.path.basename(str(name_or_path))
        entry = next((e for e in PUBLISHED.values() if e['file'] == base), None)
        path = str(name_or_path)
    else:
        dirs = list(search_dirs or []) + [os.getcwd(),
                                          os.path.expanduser('~/.cache/torch/hub/checkpoints'),
                                          os.path.expanduser('~/.cache/detr_jax')]
        path = next((os.path.join(d, entry['file']) for d in dirs
                     if os.path.exists(os.path.join(d, entry['file']))), None)
        if path is None:
            raise CheckpointError(
                f'{name_or_path}: {entry["file"]} not found in {dirs}; download it from '
                f'{DOWNLOAD_BASE}{entry["file"]} (no network access at run time)')
    if entry is not None and os.path.isfile(path):
        digest = _sha256(path)
        if not digest.startswith(entry['sha256_prefix']):
            raise CheckpointError(f'{path}: sha256 {digest[:16]}... does not start with '
                                  f'{entry["sha256_prefix"]}: not the published {entry["file"]}')
        overrides.setdefault('dilation', entry['dilation'])
    return load_checkpoint(path, **overrides)


def cli(argv):
    """detr-jax convert SRC --out DIR [--dilation] [--nheads N]"""
    import argparse
    from detr_jax import checkpoints
    p = argparse.ArgumentParser(prog='detr-jax convert', description=cli.__doc__)
    p.add_argument('src', help='official .pth, HF directory/file, or a published name')
    p.add_argument('--out', required=True)
    p.add_argument('--dilation', action='store_true', help='DC5 (tensors cannot tell)')
    p.add_argument('--nheads', type=int, default=None)
    a = p.parse_args(argv)
    overrides = {'dilation': True} if a.dilation else {}
    if a.nheads:
        overrides['nheads'] = a.nheads
    try:
        cfg, variables = from_pretrained(a.src, **overrides)
    except CheckpointError as e:
        print(f'detr-jax convert: {e}', file=sys.stderr)
        return 1
    checkpoints.save_converted(a.out, cfg, variables)
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables))
    print(f'{a.src} -> {a.out}: {cfg.backbone}{" DC5" if cfg.dilation else ""}, '
          f'{cfg.num_classes} classes, {cfg.num_queries} queries, '
          f'{"panoptic" if cfg.masks else "detection"}, {n / 1e6:.1f}M values')
    return 0
