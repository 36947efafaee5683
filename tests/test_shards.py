"""Per-host shards with two real processes (jax.distributed on 127.0.0.1):
each reads its own part, together they cover the split once per epoch, and
every step has the same bucket shape on both (a host choosing alone would
deadlock or recompile a multi-host step). A restored position continues
identically on each host."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from test_data import small_data_cfg
from detr_jax.data.datasets import build_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r'''
import json, sys
import jax
addr, pid, cfg_json, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.distributed.initialize(coordinator_address=addr, num_processes=2, process_id=pid)
import ml_collections
from detr_jax.data.datasets import build_source
from detr_jax.data.pipeline import InputPipeline, eval_batches
cfg = ml_collections.ConfigDict(json.loads(cfg_json))
cfg.buckets = tuple(tuple(b) for b in cfg.buckets)
cfg.eval_buckets = tuple(tuple(b) for b in cfg.eval_buckets)
src = build_source(cfg, 'train')
pipe = InputPipeline(src, cfg, jax.process_index(), jax.process_count())
n0, n1 = len(pipe.plan(0)), len(pipe.plan(1))
it = iter(pipe)
steps = []
for s in range(n0 + n1):
    b = next(it)
    steps.append({'shape': list(b['images'].shape), 'ids': b['image_id'].tolist(),
                  'position': dict(pipe.position)})
# resume from the position saved after step 3 (what a checkpoint holds)
pipe2 = InputPipeline(src, cfg, jax.process_index(), jax.process_count())
pipe2.restore(steps[2]['position'])
resumed = [next(iter(pipe2))['image_id'].tolist()]
ev = [b['image_id'].tolist() for b in eval_batches(build_source(cfg, 'val'), cfg,
                                                      jax.process_index(), jax.process_count())]
json.dump({'n0': n0, 'steps': steps, 'resumed': resumed, 'eval': ev,
           'process': [jax.process_index(), jax.process_count()]}, open(out, 'w'))
'''


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_processes_disjoint_shards_equal_shapes(tmp_path):
    cfg = small_data_cfg(dataset='synthetic', num_train=60, num_val=22, min_image=64,
                         max_image=128, max_objects=4, cache_dir=str(tmp_path / 'data'),
                         batch_size=4, eval_batch_size=4, max_boxes=8)
    build_source(cfg, 'train'), build_source(cfg, 'val')  # written once, read by both
    addr = f'127.0.0.1:{_free_port()}'
    env = dict(os.environ, XLA_FLAGS='', PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
    procs = [subprocess.Popen([sys.executable, '-c', WORKER, addr, str(p), cfg.to_json(),
                               str(tmp_path / f'{p}.json')], env=env, stderr=subprocess.PIPE,
                              text=True) for p in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    r = [json.load(open(tmp_path / f'{p}.json')) for p in (0, 1)]
    assert [x['process'] for x in r] == [[0, 2], [1, 2]]
    n0 = r[0]['n0']
    assert n0 > 3 and len(r[0]['steps']) == len(r[1]['steps'])
    all_ids = set(build_source(cfg, 'train').image_ids.tolist())
    for epoch in (slice(0, n0), slice(n0, None)):
        seen = []
        for a, b in zip(r[0]['steps'][epoch], r[1]['steps'][epoch]):
            assert a['shape'] == b['shape'] and a['shape'][0] == 2  # same bucket, half each
            assert a['position'] == b['position']
            assert not set(a['ids']) & set(b['ids'])
            seen += a['ids'] + b['ids']
        assert len(seen) == len(set(seen))  # nothing twice in an epoch ...
        assert set(seen) <= all_ids
        # ... and everything but the leftovers of unfilled bucket batches
        assert len(seen) >= len(all_ids) - len(cfg.buckets) * (cfg.batch_size - 1)
    for p in (0, 1):
        assert r[p]['resumed'][0] == r[p]['steps'][3]['ids']
    ev = [np.concatenate([np.array(b) for b in x['eval']]) for x in r]
    ev_ids = [i for e in ev for i in e if i >= 0]
    assert sorted(ev_ids) == sorted(build_source(cfg, 'val').image_ids.tolist())


def _main(workdir, cache, extra=()):
    # --verbosity=1: the metric writer's log lines (train/loss=..., eval/AP=...)
    return [sys.executable, '-m', 'detr_jax.main', '--config=tests/tiny_config.py',
            f'--workdir={workdir}', f'--config.data.cache_dir={cache}', '--verbosity=1',
            '--config.train.max_steps=4', '--config.train.eval_every=-1', *extra]


def _logged(stderr, key):
    import re
    return [float(v) for v in re.findall(rf'{key}=([0-9.e+-]+)', stderr)]


def test_two_process_training_equals_one_process(tmp_path):
    """The main job as two jax.distributed processes (one CPU device each,
    half the batch each) computes the losses and the AP of one process
    holding the whole batch; checkpoints are written jointly."""
    env = dict(os.environ, XLA_FLAGS='', PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
    one = subprocess.run(_main(tmp_path / 'one', tmp_path / 'c'), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    addr = f'127.0.0.1:{_free_port()}'
    procs = [subprocess.Popen(_main(tmp_path / 'two', tmp_path / f'c{p}', (
        f'--coordinator_address={addr}', '--num_processes=2', f'--process_id={p}')),
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for p in (0, 1)]
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
        errs.append(err)
    assert 'process 1 of 2, 1 local / 2 global devices' in errs[1]
    # CPU devices of two processes: the gradients go as one array
    assert 'gradients summed over the devices: one_array' in errs[1]
    assert 'gradients summed over the devices: per_parameter' in one.stderr
    for key in ('train/loss', 'train/loss_giou', 'eval/AP50', 'eval/AP'):
        want = _logged(one.stderr, key)
        assert want, key
        for err in errs:
            np.testing.assert_allclose(_logged(err, key), want, rtol=1e-4, atol=1e-6)
    assert (tmp_path / 'two' / 'checkpoints' / '4').is_dir()
