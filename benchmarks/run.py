"""Side-by-side measurements: detr_jax vs Hugging Face `transformers` DETR
(random weights), interleaved repetitions, medians, ratios; prints a
markdown table and writes it into benchmarks/README.md between the
BENCHMARKS markers (the project README carries a short summary by hand).

  python benchmarks/run.py [--quick] [--no-table] [--only=forward,train,api,...,plan,processes,restart]

forward, train and api run each peer in a process of its own, alternately
(benchmarks/peers.py); $DETR_REF (a facebookresearch/detr checkout) adds the
original's forward, run by $DETR_REF_PYTHON (a Python with torch and
torchvision; default: this one).

Needs the test extra (torch, transformers). Run on an otherwise idle machine.
"""
import argparse
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def bench_plan(rows, topology='v5e:2x2', per_chip=4):
    """The TPU compiler's figures for the R50 train step (configs/detr_r50.py,
    bf16) at 800x1088 and on Scenic's one 1344x1344 canvas (1333 rounded up
    to a multiple of 32), `per_chip` images per chip: bytes accessed per
    image (the goal: <= 4.2 GB), HBM, the roofline bound. Needs libtpu."""
    import importlib.util
    from detr_jax import plan
    spec = importlib.util.spec_from_file_location('detr_r50', os.path.join(ROOT, 'configs',
                                                                            'detr_r50.py'))
    cfg_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cfg_module)
    ours, canvas = [plan.plan_config(cfg_module.get_config(), topology, per_chip, size,
                                     steps=('train',), fit=False,
                                     report=lambda m: print(m, file=sys.stderr, flush=True))[0]
                    for size in ((800, 1088), (1344, 1344))]
    where = f'R50 train step, {topology}, {per_chip}/chip, bf16'
    rows.append((f'plan: bytes accessed per image (GB), {where}, 800x1088 vs one 1344x1344 '
                 'canvas', ours.bytes_accessed_per_image / 1e9,
                 canvas.bytes_accessed_per_image / 1e9,
                 f'goal <= 4.2 at 800x1088 (12.6 on 12-01); {ours.flops_per_chip / 1e12:.2f} '
                 f'vs {canvas.flops_per_chip / 1e12:.2f} TFLOP per chip'))
    rows.append((f'plan: HBM per chip (GiB), {where}, 800x1088 vs 1344x1344',
                 ours.hbm_bytes_per_chip / 2**30, canvas.hbm_bytes_per_chip / 2**30,
                 f'of {ours.hbm_capacity_bytes / 2**30:.0f} GiB'))
    rows.append((f'plan: step time lower bound (s), {where}, 800x1088 vs 1344x1344',
                 ours.step_time_lower_bound_s, canvas.step_time_lower_bound_s,
                 f'{ours.bound}-bound: arithmetic {ours.compute_time_s * 1e3:.1f} ms, '
                 f'HBM {ours.memory_time_s * 1e3:.1f} ms at 800x1088'))


def bench_processes(rows, steps=40):
    """The demo config's train step (fixed batch of 8) as one process with
    one device against two jax.distributed processes with one device each
    (gloo over 127.0.0.1), in steps/s, with the gradients summed as one
    array (what 'auto' chooses there) and per parameter; and the gradient
    all-reduce alone: the model's floats as its 173 arrays against the same
    floats as one."""
    import json
    import socket
    import tempfile
    worker = os.path.join(ROOT, 'benchmarks', 'processes_worker.py')
    data = tempfile.mkdtemp()
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
               JAX_PLATFORMS='cpu')

    def run(nproc, reduction='auto'):
        with socket.socket() as sock:
            sock.bind(('127.0.0.1', 0))
            port = sock.getsockname()[1]
        extra = lambda i: [f'127.0.0.1:{port}', str(nproc), str(i)] if nproc > 1 else []  # noqa
        procs = [subprocess.Popen([sys.executable, worker, data, str(steps), 'scipy', reduction,
                                   *extra(i)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True) for i in range(nproc)]
        outs = [p.communicate()[0] for p in procs]
        return json.loads(outs[0].strip().splitlines()[-1])
    one = run(1)  # also writes the synthetic set both read
    two = run(2)
    per_parameter = run(2, 'per_parameter')
    rows.append(('demo train step (steps/s), 2 processes x 1 device vs 1 process',
                 two['steps_per_s'], one['steps_per_s'],
                 f'higher is better; gradients: {two["gradient_all_reduce"]} (1 process: '
                 f'{one["gradient_all_reduce"]}); collectives in the 2-process step: '
                 f'{two["collectives"]}, host transfers {two["host_transfers"]}'))
    rows.append(('the same, 2 processes: gradients per parameter vs as one array (steps/s)',
                 per_parameter['steps_per_s'], two['steps_per_s'],
                 'per_parameter: XLA\'s combined all-reduce, which XLA:CPU runs operand by operand'))
    rows.append((f'gradient all-reduce over 2 processes (ms): {two["arrays"]} arrays vs the '
                 'same floats as one array', two['reduce_arrays_ms'], two['reduce_ms'],
                 f'{two["params"]} floats; one variadic all-reduce in the HLO, run operand by '
                 'operand by the CPU collectives'))


def bench_restart(rows):
    """The demo config's time from launch to its first train step: a first
    start (an empty compilation cache: its 5 bucket shapes compile) against
    a restart of the same run (they load from the cache; the scipy
    matcher's small program compiles again: JAX never caches a host
    callback)."""
    import re
    import tempfile
    tmp = tempfile.mkdtemp()
    env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu',
               JAX_COMPILATION_CACHE_DIR=os.path.join(tmp, 'jit'))

    def start(steps):
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, '-m', 'detr_jax.main', '--config=configs/demo.py',
             f'--workdir={tmp}/run', f'--config.train.max_steps={steps}',
             '--config.train.eval_every=0', '--config.data.num_train=64',
             f'--config.data.cache_dir={tmp}/data'],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
        # the launch until the run itself starts (imports, data) is in the
        # wall time; the loop reports how far into the run its step began
        began = float(re.search(r'began ([0-9.]+) s into the run', out).group(1))
        compiled = re.search(r'^\d+ shapes in .*$', out, re.M).group(0)
        return began, time.perf_counter() - t, compiled
    subprocess.run([sys.executable, '-c', 'import detr_jax'], cwd=ROOT, env=env, check=True)
    first, first_wall, _ = start(1)
    again, again_wall, compiled = start(2)
    rows.append(('demo: launch to its first train step (s), restart vs first start',
                 again, first, f'lower is better; the restart: {compiled}; '
                 f'whole process {again_wall:.0f} s vs {first_wall:.0f} s'))


def machine():
    return f'{platform.machine()} {os.cpu_count()} cores, jax {jax.__version__} CPU'


def interleaved(fns, reps):
    """{name: median seconds}; one call of each per round, rounds repeated."""
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_gflops(n=2048, reps=5):
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = min(_time(lambda: f(a).block_until_ready()) for _ in range(reps))
    return 2 * n ** 3 / t / 1e9


def _time(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


PEERS = os.path.join(ROOT, 'benchmarks', 'peers.py')


def alternate(task, peers, workdir, rounds, **kwargs):
    """Each peer in a process of its own, alternately (A B A B ...), `rounds`
    times -> ({peer: median of the processes' medians}, median of the
    round-by-round ratios peers[0] / peers[1], {peer: the last process's
    json}). torch's and XLA's thread pools in one process, or a busy
    neighbour, slow torch far more than XLA: alternating processes keeps
    that out of the ratio."""
    medians, last = {p: [] for p in peers}, {}
    env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
    for _ in range(rounds):
        for peer in peers:
            python = os.environ.get('DETR_REF_PYTHON', sys.executable) if peer == 'original' \
                else sys.executable
            out = subprocess.run([python, PEERS, task, peer, workdir, json.dumps(kwargs)],
                                 env=env, capture_output=True, text=True, check=True)
            last[peer] = json.loads(out.stdout.strip().splitlines()[-1])
            medians[peer].append(last[peer]['median'])
    ratios = [a / b for a, b in zip(medians[peers[0]], medians[peers[1]])]
    return ({p: statistics.median(v) for p, v in medians.items()}, statistics.median(ratios),
            last)


def _ratio_note(ratio, rounds):
    return f'median of {rounds} A/B process pairs: {ratio:.2f}'


def bench_forward(rows, workdir, rounds, hw=(800, 1066), batch=1):
    gflops = matmul_gflops()
    for dtype in ('float32', 'bfloat16'):
        t, ratio, last = alternate('forward', ('ours', 'hf'), workdir, rounds, hw=hw,
                                   batch=batch, dtype=dtype)
        H, W = -(-hw[0] // 32) * 32, -(-hw[1] // 32) * 32
        rate = last['ours']['flops'] / t['ours'] / 1e9
        rows.append((f'forward R50 {batch}x{H}x{W} {dtype}', t['ours'], t['hf'],
                     f'{_ratio_note(ratio, rounds)}; {rate:.0f} GFLOP/s = '
                     f'{100 * rate / gflops:.0f}% of matmul {gflops:.0f}'))


def bench_original(rows, workdir, rounds, hw=(800, 1066), batch=1):
    """The forward against facebookresearch/detr's own code ($DETR_REF; its
    random init, the same architecture and input)."""
    t, ratio, _ = alternate('forward', ('ours', 'original'), workdir, rounds, hw=hw,
                            batch=batch)
    H, W = -(-hw[0] // 32) * 32, -(-hw[1] // 32) * 32
    rows.append((f'forward R50 {batch}x{H}x{W} float32, the original (facebookresearch/detr)',
                 t['ours'], t['original'], _ratio_note(ratio, rounds)))


def bench_train_step(rows, workdir, rounds, hw=(800, 1066), batch=2):
    t, ratio, last = alternate('train', ('ours', 'hf'), workdir, rounds, hw=hw, batch=batch)
    H, W = -(-hw[0] // 32) * 32, -(-hw[1] // 32) * 32
    rows.append((f'compile: train step R50, one {H}x{W} bucket (s)', last['ours']['compile_s'],
                 None, 'first step of a process, with the persistent compilation cache'))
    rows.append((f'train step R50 {batch}x{H}x{W} (matching, loss, AdamW)', t['ours'], t['hf'],
                 _ratio_note(ratio, rounds)))
    return t['ours']


def bench_api(rows, workdir, rounds):
    """Images/s of `Predictor` on a folder of mixed-size images against
    Hugging Face's object-detection pipeline (times per pass: lower is
    better)."""
    t, ratio, last = alternate('api', ('ours', 'hf'), workdir, rounds)
    n = last['ours']['images']
    rows.append((f'inference API on a folder of {n} mixed-size images, s per pass '
                 '(Predictor vs HF pipeline)', t['ours'], t['hf'],
                 f'{_ratio_note(ratio, rounds)}; {n / t["ours"]:.2f} vs {n / t["hf"]:.2f} '
                 f'images/s; first pass {last["ours"]["first_pass_s"]:.0f} s vs '
                 f'{last["hf"]["first_pass_s"]:.0f} s: {last["ours"]["compilations"]}'))


def bench_matching(rows, reps, step_time_b2):
    """Matching (cost + solver) at the paper config, as a share of a step."""
    from detr_jax.losses import match_all_layers
    rng = np.random.default_rng(0)
    for name, (B, Q, M, L, C) in {'paper B=64 Q=100 M=50 L=6': (64, 100, 50, 6, 92),
                                  'demo B=8 Q=16 M=12 L=3': (8, 16, 12, 3, 7)}.items():
        outs = {'pred_logits': jnp.asarray(rng.normal(size=(B, Q, C)), jnp.float32),
                'pred_boxes': jnp.asarray(rng.uniform(0.1, 0.9, (B, Q, 4)), jnp.float32),
                'aux_outputs': [{'pred_logits': jnp.asarray(rng.normal(size=(B, Q, C)), jnp.float32),
                                 'pred_boxes': jnp.asarray(rng.uniform(0.1, 0.9, (B, Q, 4)), jnp.float32)}
                                for _ in range(L - 1)]}
        n = rng.integers(0, M + 1, B)
        t = {'labels': jnp.asarray(rng.integers(0, C - 1, (B, M)), jnp.int32),
             'boxes': jnp.asarray(rng.uniform(0.1, 0.9, (B, M, 4)), jnp.float32),
             'valid': jnp.asarray(np.arange(M)[None] < n[:, None])}
        fns = {}
        for solver in ('scipy', 'optax'):
            f = jax.jit(functools.partial(match_all_layers, matcher_cfg=dict(
                cost_class=1., cost_bbox=5., cost_giou=2., solver=solver)))
            f(outs, t).block_until_ready()
            fns[solver] = functools.partial(lambda f: f(outs, t).block_until_ready(), f)
        r = interleaved(fns, reps)
        step = step_time_b2 * B / 2 if 'paper' in name else demo_step_time()
        what = ('an estimated CPU B=64 step (32 x the B=2 step)' if 'paper' in name
                else 'a measured demo step')
        note = (f'share of {what}, {step:.3g} s: scipy {100 * r["scipy"] / step:.2f}%, '
                f'optax {100 * r["optax"] / step:.2f}%')
        rows.append((f'matching {name} (scipy vs optax)', r['scipy'], r['optax'], note))


def demo_step_time(reps=20):
    """Seconds per train step of configs/demo.py on one synthetic batch."""
    import tempfile
    from detr_jax.data.datasets import build_source
    from detr_jax.data.pipeline import TRAIN_STEP_KEYS, InputPipeline, split_batch
    from detr_jax.sharding import make_mesh, to_global
    from detr_jax.trainer import build_trainer
    sys.path.insert(0, os.path.join(ROOT, 'configs'))
    import demo
    c = demo.get_config()
    c.data.num_train, c.data.cache_dir = 64, tempfile.mkdtemp()
    batch = next(iter(InputPipeline(build_source(c.data, 'train'), c.data)))
    trainer = build_trainer(c, make_mesh(), steps_per_epoch=250)
    state = trainer.init_state(jax.random.PRNGKey(0))
    step = trainer.train_step
    g = to_global(split_batch(batch, TRAIN_STEP_KEYS)[0], trainer.mesh)
    state, m = step(state, g, jax.random.PRNGKey(0))
    m['loss'].block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        state, m = step(state, g, jax.random.PRNGKey(0))
    m['loss'].block_until_ready()
    return (time.perf_counter() - t) / reps


def bench_input_and_buckets(rows):
    from detr_jax.data.transforms import (choose_bucket, eval_resize_params, padding_overhead,
                                          sample_train_params)
    from detr_jax.config_defaults import base_config
    # COCO 2017 train image sizes, approximated by their common shapes
    # (640 on the long side; 4:3 landscape dominates): fractions are ours.
    shapes = [((480, 640), 0.45), ((427, 640), 0.20), ((640, 480), 0.12), ((640, 427), 0.07),
              ((424, 640), 0.05), ((640, 640), 0.03), ((360, 640), 0.05), ((512, 640), 0.03)]
    rng = np.random.default_rng(0)
    sizes = [shapes[i][0] for i in rng.choice(len(shapes), 5000, p=[p for _, p in shapes])]
    c = base_config().data
    # a different draw of the augmentation than the one the buckets were fitted on
    finals = [sample_train_params(np.random.default_rng([5, i]), h, w, c).size
              for i, (h, w) in enumerate(sizes)]
    over = padding_overhead(finals, c.buckets)
    canvas = sum(1333 * 1333 for _ in finals) / sum(h * w for h, w in finals)
    used = len({choose_bucket(h, w, c.buckets) for h, w in finals})
    rows.append(('padding: bucket pixels / real pixels (COCO recipe, train)', over, canvas,
                 f'vs one 1333x1333 canvas; {used} bucket shapes used = compilations per epoch'))
    ev = [eval_resize_params(h, w, c).size for h, w in sizes]
    rows.append(('padding (COCO recipe, eval)', padding_overhead(ev, c.eval_buckets),
                 sum(1333 * 1333 for _ in ev) / sum(h * w for h, w in ev), 'vs 1333x1333'))


def _images_per_sec(src, c, batches=10, skip=1):
    """Images/s over `batches` batches after the first `skip`."""
    from detr_jax.data.pipeline import InputPipeline
    it = iter(InputPipeline(src, c))
    for _ in range(skip):
        next(it)
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)['images'])
    it.close()
    return n / (time.perf_counter() - t)


def _tfds_from_folder(folder, root):
    """TFDS's coco/2017 builder prepared (ArrayRecord) from a COCO folder."""
    import json
    import shutil
    sys.path.insert(0, os.path.join(ROOT, 'tests'))
    import tfds_fake
    from detr_jax.coco_categories import COCO_CATEGORIES
    things = [{'id': i, 'name': n} for i, n, t in COCO_CATEGORIES if t]
    data = json.load(open(folder['instances']))
    data['categories'] = things  # synthetic ids 1..6 are COCO thing ids
    ann = os.path.join(root, 'ann', 'annotations')
    os.makedirs(ann)
    paths = {'train_annotations': os.path.dirname(ann), 'validation_annotations':
             os.path.dirname(ann), 'test_annotations': os.path.dirname(ann)}
    for split, key, images in (('train2017', 'train', data['images']),
                               ('val2017', 'validation', data['images'][:2]),
                               ('test2017', 'test', data['images'][:1])):
        d = os.path.join(root, key, split)
        os.makedirs(d)
        for im in images:
            shutil.copy(os.path.join(folder['images'], im['file_name']), d)
        ids = {im['id'] for im in images}
        sub = dict(data, images=images,
                   annotations=[a for a in data['annotations'] if a['image_id'] in ids])
        name = f'image_info_{split}.json' if key == 'test' else f'instances_{split}.json'
        json.dump(sub, open(os.path.join(ann, name), 'w'))
        paths[f'{key}_images'] = os.path.dirname(d)
    return tfds_fake.prepare(paths, os.path.join(root, 'tfds'))


def bench_pipeline(rows, tmpdir):
    from detr_jax.config_defaults import base_config
    from detr_jax.data import synthetic
    from detr_jax.data.datasets import build_source, synthetic_root
    from detr_jax.data.tfds_source import load_tfds
    sys.path.insert(0, os.path.join(ROOT, 'configs'))
    import demo
    for name, c in (('demo sizes', demo.get_config().data), ('COCO recipe sizes', None)):
        if c is None:
            c = base_config().data
            c.min_image, c.max_image = 400, 640
            c.num_train, c.batch_size = 128, 8
        c.cache_dir = tmpdir
        src = build_source(c, 'train')
        rows.append((f'input pipeline images/s ({name})', _images_per_sec(src, c), None, ''))
        if c.cache_images:  # the second epoch on: decoded images from memory
            c2 = c.copy_and_resolve_references()
            c2.cache_images = False
            rows.append((f'input pipeline images/s ({name}, after the first epoch: images '
                         'cached vs decoded again)',
                         _images_per_sec(src, c, batches=200, skip=300),
                         _images_per_sec(src, c2, batches=200, skip=300),
                         'data.cache_images; ratio > 1 = the cache is faster'))
    # TFDS (ArrayRecord, random access) vs the same images as a COCO folder
    folder = synthetic.write_coco(os.path.join(synthetic_root(c), f'n{c.num_train}'), 'train',
                                  c.num_train, min_size=c.min_image, max_size=c.max_image)
    data_dir = _tfds_from_folder(folder, os.path.join(tmpdir, 'tfds_bench'))
    tf_src = load_tfds('coco/2017', 'train', data_dir, cache_dir=os.path.join(tmpdir, 'idx'))
    c.max_boxes = 100
    ours = _images_per_sec(tf_src, c)
    rows.append(('input pipeline images/s, TFDS coco/2017 vs COCO folder (COCO recipe sizes)',
                 ours, _images_per_sec(build_source(c, 'train'), c),
                 'images/s: ratio > 1 = TFDS faster; same images (TFDS: JPEG, folder: PNG)'))


def bench_memory(rows, tmpdir):
    r = subprocess.run([sys.executable, '-c', (
        'import sys; sys.argv=["x", "--config=configs/demo.py", "--workdir=%s/mem", '
        '"--mode=train", "--config.train.max_steps=30", "--config.data.cache_dir=%s"]\n'
        'from absl import app\nfrom detr_jax import main\n'
        'try:\n    app.run(main.main)\nexcept SystemExit:\n    pass\n'
        # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across exec,
        # so it reported this (large) benchmark process's peak (7.3-7.5 GB)
        'print("MAXRSS", [l.split()[1] for l in open("/proc/self/status")\n'
        '                 if l.startswith("VmHWM:")][0])') % (tmpdir, tmpdir)],
        cwd=ROOT, capture_output=True, text=True)
    m = re.search(r'MAXRSS (\d+)', r.stdout)
    rows.append(('peak host memory, demo training (MiB)', int(m.group(1)) / 1024 if m else float('nan'),
                 None, ''))


class Rows(list):
    """Rows that are printed as they come (the whole run takes minutes)."""

    def append(self, row):
        super().append(row)
        print('measured:', row[0], fmt(row[1]), fmt(row[2]), file=sys.stderr, flush=True)


def fmt(v):
    if v is None:
        return '-'
    return f'{v:.3g}'


def table(rows):
    out = [f'Machine: {machine()}. Times in seconds (median of interleaved repetitions); '
           'ratio = ours / peer (< 1: we are faster).', '',
           '| measurement | detr_jax | peer | ratio | notes |', '|---|---|---|---|---|']
    for name, ours, peer, note in rows:
        ratio = f'{ours / peer:.2f}' if peer else '-'
        out.append(f'| {name} | {fmt(ours)} | {fmt(peer)} | {ratio} | {note} |')
    return '\n'.join(out)


TABLE_FILE = os.path.join(ROOT, 'benchmarks', 'README.md')


def merge_rows(rows, readme_text):
    """A partial run (--only) replaces its own rows of the table and keeps
    the others."""
    old = re.search(r'<!-- BENCHMARKS -->(.*)<!-- /BENCHMARKS -->', readme_text, re.S)
    if not old:
        return rows
    new = {r[0]: r for r in rows}
    merged = []
    for line in old.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) != 5 or cells[0] in ('measurement', '---'):
            continue
        if cells[0] in new:  # re-measured: in its old place
            merged.append(new.pop(cells[0]))
        else:
            num = lambda v: None if v == '-' else float(v)  # noqa: E731
            merged.append((cells[0], num(cells[1]), num(cells[2]), cells[4]))
    return merged + list(new.values())


def write_table(text, path=TABLE_FILE):
    """The table between the BENCHMARKS markers of `path` (the rest of the
    file, its commentary, is kept)."""
    s = open(path).read() if os.path.exists(path) else '# Benchmarks\n'
    block = f'<!-- BENCHMARKS -->\n{text}\n<!-- /BENCHMARKS -->'
    if '<!-- BENCHMARKS -->' in s:
        s = re.sub(r'<!-- BENCHMARKS -->.*<!-- /BENCHMARKS -->', lambda _: block, s, flags=re.S)
    else:
        s += f'\n{block}\n'
    open(path, 'w').write(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true', help='smaller images, fewer repetitions')
    ap.add_argument('--no-table', action='store_true', help='print only; leave '
                    'benchmarks/README.md as it is')
    ap.add_argument('--only', default='', help='comma list: forward,original,train,api,matching,'
                    'data,memory,plan,processes,restart (plan: the TPU compiler, libtpu; ~20 min)')
    a = ap.parse_args()
    reps = 3 if a.quick else 5
    rounds = 2 if a.quick else 3  # A/B process pairs
    hw = (384, 512) if a.quick else (800, 1066)
    only = set(a.only.split(',')) if a.only else {'forward', 'original', 'train', 'api',
                                                   'matching', 'data', 'memory', 'plan',
                                                   'processes', 'restart'}
    import tempfile
    tmp = tempfile.mkdtemp()
    rows = Rows()
    if only & {'forward', 'original', 'train', 'matching', 'api'}:
        subprocess.run([sys.executable, PEERS, 'setup', tmp], check=True,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
    if 'forward' in only:
        bench_forward(rows, tmp, rounds, hw, 1)
        bench_forward(rows, tmp, rounds, hw, 2)
    if 'original' in only:
        if os.environ.get('DETR_REF'):
            bench_original(rows, tmp, rounds, hw, 1)
        else:
            print('original: skipped (set DETR_REF to a facebookresearch/detr checkout)',
                  file=sys.stderr)
    step = None
    if 'train' in only or 'matching' in only:
        step = bench_train_step(rows, tmp, rounds, hw, 2)
    if 'api' in only:
        bench_api(rows, tmp, rounds)
    if 'matching' in only:
        bench_matching(rows, reps, step)
    if 'data' in only:
        bench_input_and_buckets(rows)
        bench_pipeline(rows, tmp)
    if 'memory' in only:
        bench_memory(rows, tmp)
    if 'plan' in only:
        bench_plan(rows)
    if 'processes' in only:
        bench_processes(rows)
    if 'restart' in only:
        bench_restart(rows)
    print(table(rows))
    if not a.no_table:
        if a.only and os.path.exists(TABLE_FILE):
            rows = merge_rows(rows, open(TABLE_FILE).read())
        write_table(table(rows))


if __name__ == '__main__':
    main()
