"""Several hosts, for real: two `jax.distributed` processes on 127.0.0.1
(2 CPU devices each) training the tiny config through `detr_jax.main`.

- A run moved from one device to two processes and back has a one-process
  4-device run's parameters within 1e-5; the two processes' checkpoint
  evaluates in one process (`--mode=eval`).
- Ten restarts of two processes in a row all start.
- SIGTERM to one of them: both save the same step and exit within 30 s; the
  run resumes from there like an uninterrupted one.
- SIGKILL to one: the other exits non-zero within the heartbeat timeout,
  naming the lost task; both restarted resume from the last checkpoint.
- A panoptic evaluation in two processes reports one process's PQ.
"""
import json
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from test_preemption import _wait_for
from test_shards import _free_port
from test_train import CONFIG, ROOT, _params


def _env(devices):
    env = dict(os.environ)
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    return env


def _cmd(workdir, cache_dir, *extra):
    return [os.sys.executable, '-m', 'detr_jax.main', f'--config={CONFIG}',
            f'--workdir={workdir}', '--mode=train', f'--config.data.cache_dir={cache_dir}',
            *extra]


def _one(workdir, cache_dir, devices, *extra):
    r = subprocess.run(_cmd(workdir, cache_dir, *extra), env=_env(devices), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _start_two(workdir, cache_dir, *extra, heartbeat=100):
    """Two processes of 2 devices each; their consoles piped, their logs in
    workdir.p0.log / .p1.log."""
    port = _free_port()
    procs = []
    for pid in range(2):
        log = open(f'{workdir}.p{pid}.log', 'a')
        p = subprocess.Popen(_cmd(workdir, cache_dir, *extra, f'--heartbeat_timeout={heartbeat}',
                                  f'--coordinator_address=127.0.0.1:{port}',
                                  '--num_processes=2', f'--process_id={pid}'),
                             env=_env(2), stdout=subprocess.PIPE, stderr=log, text=True)
        p.log = f'{workdir}.p{pid}.log'
        procs.append(p)
    return procs


def _finish(procs, timeout=900):
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs):
        with open(p.log) as f:
            assert p.returncode == 0, (out, f.read()[-3000:])
    return outs


def _assert_close(a, b, tol=1e-5):
    (s1, p1), (s2, p2) = _params(a), _params(b)
    assert s1 == s2, (s1, s2)
    for x, y in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_allclose(x, y, atol=tol, rtol=tol)


def test_one_run_moves_between_one_device_and_two_processes_like_four_devices(tmp_path):
    """1 process x 1 device (steps 0-4) -> 2 processes x 2 devices (4-8) ->
    1 x 1 (8-12) against one process with 4 devices (0-12): the same
    parameters at 8 and 12, so each restart read the batch the previous
    topology would have read next."""
    cache = str(tmp_path / 'data')
    steps = ['--config.train.checkpoint_every=4', '--config.train.keep_checkpoints=5']
    ref = tmp_path / 'one_process_4_devices'
    _one(ref, cache, 4, '--config.train.max_steps=12', *steps)
    run = tmp_path / 'moving'
    _one(run, cache, 1, '--config.train.max_steps=4', *steps)
    outs = _finish(_start_two(run, cache, '--config.train.max_steps=8', *steps))
    assert 'resumed from step 4' in outs[0]
    (s1, p1), (s2, p2) = _params(ref, 8), _params(run)
    assert s1 == s2 == 8
    for x, y in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)
    # the two-process checkpoint evaluated by one process with one device
    ev = tmp_path / 'eval_copy'
    shutil.copytree(run, ev)
    r = subprocess.run([os.sys.executable, '-m', 'detr_jax.main', f'--workdir={ev}',
                        '--mode=eval'], env=_env(1), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (ev / 'eval' / 'metrics_8.json').exists()
    # ... and resumed by one process with one device: the 4-device run's step 12
    r = _one(run, cache, 1, '--config.train.max_steps=12', *steps)
    assert 'resumed from step 8' in r.stdout
    _assert_close(ref, run)


def test_ten_restarts_of_two_processes_all_start(tmp_path):
    """Each start trains one step: ten rendezvous in a row, none timing out
    (gloo's 30 s: the processes reach their first collective together
    because both load the same programs from the compilation cache)."""
    cache = str(tmp_path / 'data')
    wd = tmp_path / 'wd'
    for step in range(1, 11):
        outs = _finish(_start_two(wd, cache, f'--config.train.max_steps={step}',
                                  '--config.train.checkpoint_every=1'), timeout=300)
        if step > 1:
            assert f'resumed from step {step - 1}' in outs[0], outs[0][-2000:]
    assert _params(wd)[0] == 10


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
    cache = str(tmp_path / 'data')
    wd = tmp_path / 'wd'
    procs = _start_two(wd, cache, '--config.train.max_steps=100000', '--config.train.log_every=1',
                       '--config.train.checkpoint_every=100000')
    _wait_for(procs[0], ' 3/100000')
    t = time.time()
    procs[1].send_signal(signal.SIGTERM)  # process 0 gets nothing
    outs = _finish(procs, timeout=60)
    took = time.time() - t
    assert took < 30, f'{took:.0f}s'
    said = [next(line for line in out.splitlines() if 'SIGTERM: checkpoint at step' in line)
            for out in outs[:1]]  # process 0 prints the console
    step = int(said[0].split('step ')[1].split()[0])
    assert _params(wd)[0] == step
    # resumed by both, it ends where an uninterrupted run ends
    _finish(_start_two(wd, cache, f'--config.train.max_steps={step + 2}'))
    ref = tmp_path / 'ref'
    _one(ref, cache, 4, f'--config.train.max_steps={step + 2}')
    _assert_close(ref, wd)


def test_a_lost_process_stops_the_other_and_both_restarted_resume(tmp_path):
    cache = str(tmp_path / 'data')
    wd = tmp_path / 'wd'
    args = ['--config.train.max_steps=100000', '--config.train.log_every=1',
            '--config.train.checkpoint_every=4']
    procs = _start_two(wd, cache, *args, heartbeat=10)
    _wait_for(procs[0], ' 5/100000')
    # the step-4 checkpoint is written asynchronously: kill once it is
    # committed (orbax renames its temporary folder to `4` last), so that the
    # restart has it to resume from (on a loaded machine step 5 came first)
    deadline = time.time() + 120
    while not (wd / 'checkpoints' / '4').exists() and time.time() < deadline:
        time.sleep(0.2)
    procs[1].kill()
    t = time.time()
    procs[0].communicate(timeout=120)
    took = time.time() - t
    assert procs[0].returncode != 0
    assert took < 10 + 20, f'{took:.0f}s'  # the heartbeat timeout, and some slack
    with open(procs[0].log) as f:
        log = f.read()
    assert 'The following tasks are unhealthy (stopped sending heartbeats):\n1' in log, log[-3000:]
    saved = _params(wd)[0]
    assert saved >= 4
    procs = _start_two(wd, cache, '--config.train.max_steps=8',
                       '--config.train.checkpoint_every=4')
    outs = _finish(procs)
    assert f'resumed from step {saved}' in outs[0]
    assert _params(wd)[0] == 8


def test_panoptic_evaluation_of_two_processes_sums_their_pq(tmp_path):
    """A panoptic model's `--mode=eval` in two processes (each post-processes
    and scores its own images) reports the PQ of one process over all."""
    cache = str(tmp_path / 'data')
    panoptic = ['--config.data.panoptic=True', '--config.model.masks=True',
                '--config.model.num_classes=8', '--config.model.hidden_dim=128',
                '--config.model.nheads=8', '--config.train.panoptic_threshold=0.0',
                '--config.train.max_steps=2']
    one = tmp_path / 'one'
    _one(one, cache, 1, *panoptic)  # trains (no evaluation with --mode=train)
    r = subprocess.run([os.sys.executable, '-m', 'detr_jax.main', f'--workdir={one}',
                        '--mode=eval'], env=_env(1), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    want = json.loads((one / 'eval' / 'metrics_2.json').read_text())
    assert want['images'] == 16 and want['PQ'] is not None
    procs = []
    port = _free_port()
    for pid in range(2):
        procs.append(subprocess.Popen(
            [os.sys.executable, '-m', 'detr_jax.main', f'--workdir={one}', '--mode=eval',
             f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
             f'--process_id={pid}'], env=_env(2), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out = p.communicate(timeout=900)[0]
        assert p.returncode == 0, out[-3000:]
    got = json.loads((one / 'eval' / 'metrics_2.json').read_text())
    for k in ('PQ', 'SQ', 'RQ', 'PQ_th', 'PQ_st', 'AP'):
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
    # each process wrote its own images' segments
    parts = [json.loads((one / 'eval' / f'panoptic_2.process{p}.json').read_text())
             for p in range(2)]
    ids = [a['image_id'] for part in parts for a in part['annotations']]
    assert len(ids) == len(set(ids)) == 16
