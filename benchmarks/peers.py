"""One peer's measurement in a process of its own (benchmarks/run.py runs
these alternately, A B A B: torch's OpenMP threads and XLA's thread pool in
one process slow each other, torch far more).

  python benchmarks/peers.py setup WORKDIR
      random DETR-R50 weights (Hugging Face's init, seed 0) as a converted
      folder WORKDIR/r50 (so every peer runs the same weights), and 32 JPEG
      photos-like images of mixed sizes in WORKDIR/images
  python benchmarks/peers.py TASK PEER WORKDIR [JSON]
      TASK: forward | train | api; PEER: ours | hf | original (forward only;
      the facebookresearch/detr checkout at $DETR_REF, read at run time)
      prints one json line: {'seconds': [per repetition], ...}
"""
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
NUM_IMAGES = 32


def hf_model(train=False, num_labels=91):
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
    torch.manual_seed(0)
    cfg = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False,
                     backbone_config=ResNetConfig(depths=[3, 4, 6, 3], layer_type='bottleneck',
                                                  hidden_sizes=[256, 512, 1024, 2048],
                                                  embedding_size=64, out_features=['stage4']),
                     num_labels=num_labels, auxiliary_loss=train)
    m = DetrForObjectDetection(cfg)
    return m.train() if train else m.eval()


def setup(workdir):
    from PIL import Image
    from detr_jax import checkpoints
    from detr_jax.convert import hf_to_original, infer_model_config, variables_from_state_dict
    from detr_jax.convert import _label_map
    from detr_jax.models import abstract_variables, build_model
    import ml_collections
    sd = hf_to_original({k: v.numpy() for k, v in hf_model().state_dict().items()})
    cfg = infer_model_config(sd, {})
    variables = variables_from_state_dict(sd, abstract_variables(build_model(cfg)))
    cfg.label_map = ml_collections.ConfigDict({str(k): v for k, v in
                                               _label_map(cfg.num_classes).items()})
    checkpoints.save_converted(os.path.join(workdir, 'r50'), cfg, variables)
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(workdir, 'images'), exist_ok=True)
    for i in range(NUM_IMAGES):  # COCO-like sizes: long side 640, both orientations
        h, w = (480, 640) if i % 3 else (640, int(rng.integers(400, 520)))
        w = w if i % 5 else int(rng.integers(500, 640))
        y, x = np.mgrid[:h, :w]
        img = np.stack([(x * (1 + i % 4)) % 256, (y * 2) % 256, (x + y + 16 * i) % 256], -1)
        img = (img + rng.integers(0, 40, img.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(workdir, 'images', f'{i:03d}.jpg'), quality=90)


def _images(workdir):
    folder = os.path.join(workdir, 'images')
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))]


def _inputs(hw, batch):
    H, W = -(-hw[0] // 32) * 32, -(-hw[1] // 32) * 32
    x = np.random.default_rng(0).normal(size=(batch, H, W, 3)).astype(np.float32)
    m = np.ones((batch, H, W), bool)
    if batch == 2:
        m[1, :, W * 3 // 4:] = False
    return x, m


def _repeat(f, reps):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return out


def forward(peer, workdir, hw=(800, 1066), batch=1, dtype='float32', reps=3):
    x, m = _inputs(hw, batch)
    if peer == 'ours':
        import jax
        import jax.numpy as jnp
        from detr_jax.convert import load_checkpoint
        from detr_jax.models import build_model
        cfg, v = load_checkpoint(os.path.join(workdir, 'r50'))
        cfg.dtype = dtype
        f = jax.jit(build_model(cfg).apply)
        xj, mj = jnp.asarray(x), jnp.asarray(m)
        t = time.perf_counter()
        compiled = f.lower(v, xj, mj).compile()
        first = time.perf_counter() - t
        flops = (compiled.cost_analysis() or {}).get('flops', 0.0)
        run = lambda: compiled(v, xj, mj)['pred_logits'].block_until_ready()  # noqa: E731
        run()
        return {'seconds': _repeat(run, reps), 'flops': flops, 'compile_s': first}
    import torch
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    if peer == 'hf':
        model = hf_model()
        tm = torch.from_numpy(m.astype(np.int64))
        call = lambda: model(pixel_values=tx, pixel_mask=tm)  # noqa: E731
    else:
        model = original_model()
        from util.misc import NestedTensor  # the original's own (DETR_REF on sys.path)
        tm = torch.from_numpy(~m)
        call = lambda: model(NestedTensor(tx, tm))  # noqa: E731

    def run():
        with torch.no_grad():
            call()
    run()
    return {'seconds': _repeat(run, reps)}


def original_model():
    """facebookresearch/detr's DETR-R50 (random weights, no download) from
    the checkout at $DETR_REF; its code is read there, never copied."""
    import torch
    import torchvision
    ref = os.environ.get('DETR_REF')
    if not ref or not os.path.exists(os.path.join(ref, 'hubconf.py')):
        raise SystemExit('set DETR_REF to a checkout of facebookresearch/detr')
    sys.path.insert(0, ref)
    real = torchvision.models.resnet50
    torchvision.models.resnet50 = lambda pretrained=False, **kw: real(weights=None, **kw)
    import hubconf
    torch.manual_seed(0)
    return hubconf.detr_resnet50(pretrained=False).eval()


def train(peer, workdir, hw=(800, 1066), batch=2, reps=3):
    rng = np.random.default_rng(0)
    H, W = -(-hw[0] // 32) * 32, -(-hw[1] // 32) * 32
    M = 20
    b = {'images': rng.integers(0, 255, (batch, H, W, 3)).astype(np.uint8),
         'pixel_mask': np.ones((batch, H, W), bool),
         'labels': rng.integers(1, 91, (batch, M)).astype(np.int32),
         'boxes': rng.uniform(0.2, 0.5, (batch, M, 4)).astype(np.float32),
         'valid': np.arange(M)[None].repeat(batch, 0) < 8}
    if peer == 'ours':
        import jax
        from detr_jax.config_defaults import base_config
        from detr_jax.sharding import make_mesh, to_global
        from detr_jax.trainer import build_trainer
        c = base_config()
        c.data.buckets = ((H, W),)
        trainer = build_trainer(c, make_mesh(), steps_per_epoch=1000)
        box = [trainer.init_state(jax.random.PRNGKey(0))]
        g = to_global(b, trainer.mesh)
        t = time.perf_counter()

        def run():
            box[0], metrics = trainer.train_step(box[0], g, jax.random.PRNGKey(0))
            metrics['loss'].block_until_ready()
        run()
        return {'seconds': _repeat(run, reps), 'compile_s': time.perf_counter() - t}
    import torch
    model = hf_model(train=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    px = torch.from_numpy(b['images'].transpose(0, 3, 1, 2).astype(np.float32) / 255)
    labels = [{'class_labels': torch.from_numpy(b['labels'][i, :8]).long(),
               'boxes': torch.from_numpy(b['boxes'][i, :8])} for i in range(batch)]

    def run():
        out = model(pixel_values=px, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
    run()
    return {'seconds': _repeat(run, reps)}


def api(peer, workdir, reps=1):
    """A folder of NUM_IMAGES mixed-size images, threshold 0.7: a first pass
    (compilations / warm-up), then `reps` timed passes."""
    paths = _images(workdir)
    if peer == 'ours':
        from detr_jax import compilations
        from detr_jax.inference import Predictor
        predictor = Predictor.load(os.path.join(workdir, 'r50'))
        t = time.perf_counter()
        with compilations.record() as rec:
            predictor(paths, threshold=0.7)
        first = time.perf_counter() - t
        run = lambda: predictor(paths, threshold=0.7)  # noqa: E731
        return {'seconds': _repeat(run, reps), 'first_pass_s': first,
                'compilations': rec.summary(), 'images': len(paths)}
    import torch
    from transformers import DetrImageProcessor, pipeline
    detector = pipeline('object-detection', model=hf_model(), image_processor=DetrImageProcessor(),
                        device='cpu')
    t = time.perf_counter()
    with torch.no_grad():
        detector(paths, threshold=0.7)
    first = time.perf_counter() - t

    def run():
        with torch.no_grad():
            detector(paths, threshold=0.7)
    return {'seconds': _repeat(run, reps), 'first_pass_s': first, 'images': len(paths)}


def main(argv):
    if argv[0] == 'setup':
        setup(argv[1])
        return
    task, peer, workdir = argv[:3]
    kwargs = json.loads(argv[3]) if len(argv) > 3 else {}
    for k in ('hw',):
        if k in kwargs:
            kwargs[k] = tuple(kwargs[k])
    out = {'forward': forward, 'train': train, 'api': api}[task](peer, workdir, **kwargs)
    out['median'] = statistics.median(out['seconds'])
    print(json.dumps(out), flush=True)


if __name__ == '__main__':
    main(sys.argv[1:])
