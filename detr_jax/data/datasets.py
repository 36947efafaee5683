"""Which Source a config's `data` section names, for a split."""
import os

from detr_jax.console import say
from detr_jax.data import synthetic
from detr_jax.data.coco_format import DataError, load_instances, load_panoptic


def synthetic_root(cfg):
    base = cfg.cache_dir or os.path.join(os.path.expanduser('~'), '.cache', 'detr_jax', 'synthetic')
    key = (f'v{synthetic.VERSION}_seed{cfg.synthetic_seed}_{cfg.min_image}-{cfg.max_image}'
           f'_obj{cfg.max_objects}')
    return os.path.join(base, key)


def build_source(cfg, split, label_map=None):
    """split: 'train' or 'val'. `label_map` (class index -> {id, name,
    isthing}): the model's, whose class indices the source must use (its
    categories matched by id); None: the data's own."""
    on_bad = cfg.on_bad_input
    if cfg.dataset == 'synthetic':
        n = cfg.num_train if split == 'train' else cfg.num_val
        root = os.path.join(synthetic_root(cfg), f'n{n}')
        p = synthetic.write_coco(root, split, n, seed=cfg.synthetic_seed, min_size=cfg.min_image,
                                 max_size=cfg.max_image, max_objects=cfg.max_objects,
                                 progress=lambda i, n: say(
                                     f'synthetic {split}: {i}/{n} images written to {root}'))
        if cfg.panoptic:
            return load_panoptic(p['panoptic_json'], p['images'], p['panoptic_png'], on_bad,
                                 name=f'synthetic-{split}', label_map=label_map)
        return load_instances(p['instances'], p['images'], on_bad, name=f'synthetic-{split}',
                              label_map=label_map)
    if cfg.dataset == 'coco_folder':
        ann, images = (cfg.train_ann, cfg.train_images) if split == 'train' else (cfg.val_ann, cfg.val_images)
        if not ann or not images:
            raise DataError(f'config.data.{split}_ann and config.data.{split}_images must be set '
                            'for dataset=coco_folder')
        by_id = cfg.class_index == 'category_id'
        if cfg.panoptic:
            png = cfg.train_panoptic_png if split == 'train' else cfg.val_panoptic_png
            return load_panoptic(ann, images, png, on_bad, by_category_id=by_id,
                                 label_map=label_map)
        return load_instances(ann, images, on_bad, by_category_id=by_id, label_map=label_map)
    if cfg.dataset == 'tfds':
        from detr_jax.data.tfds_source import load_tfds
        if cfg.panoptic != ('panoptic' in cfg.tfds_name):
            raise DataError(f'config.data.tfds_name={cfg.tfds_name!r} does not match '
                            f'config.data.panoptic={cfg.panoptic}')
        cache = os.path.join(cfg.cache_dir, 'tfds_index') if cfg.cache_dir else ''
        src = load_tfds(cfg.tfds_name, split, cfg.tfds_data_dir, on_bad, cache_dir=cache,
                        ann_file=cfg.val_ann if split != 'train' else '')
        if label_map is not None:  # TFDS's classes are fixed: the model must know them
            ours = {int(k): v['id'] for k, v in label_map.items()}
            missing = sorted(i for i, v in src.label_map.items() if ours.get(i) != v['id'])
            if missing:
                raise DataError(f'{src.name}: the model\'s label map has no class index = '
                                f'category id for COCO categories {missing[:10]}')
        return src
    raise DataError(f"config.data.dataset={cfg.dataset!r}: must be 'synthetic', 'coco_folder' "
                    "or 'tfds'")
