"""Preemption (about 30 s of notice on a spot TPU VM) and failed saves, on
real subprocesses: SIGTERM while the train step compiles or while the run
evaluates ends the process within seconds and loses nothing; the run then
resumes to the parameters of an uninterrupted one. A checkpoint that cannot
be written stops the run at the next log step with the reason."""
import os
import signal
import subprocess
import time

import jax
import numpy as np

from test_train import _env, _params, _train_cmd

# a larger transformer than the tiny config's: its train step compiles for
# long enough (~10 s on 2 cores) to be interrupted in the middle
SLOW_COMPILE = ['--config.model.enc_layers=4', '--config.model.dec_layers=4']


def _start(workdir, cache_dir, *extra):
    """The run, its console piped; its log in `workdir`.log (a pipe nobody
    reads would stall it once full)."""
    log = open(f'{workdir}.log', 'w')
    proc = subprocess.Popen(_train_cmd(workdir, cache_dir, *SLOW_COMPILE, *extra), env=_env(),
                            stdout=subprocess.PIPE, stderr=log, text=True)
    proc.log = f'{workdir}.log'
    return proc


def _wait_for(proc, text, timeout=600):
    """Reads the run's console until a line containing `text`; returns what was read."""
    seen, deadline = '', time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        assert line, f'the run ended before printing {text!r}: {seen[-2000:]}'
        seen += line
        if text in line:
            return seen
    raise AssertionError(f'no {text!r} within {timeout}s')


def _sigterm_and_time(proc):
    t = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    return time.time() - t, out, _log(proc)


def _log(proc):
    with open(proc.log) as f:
        return f.read()


def _assert_same_params(a, b):
    (s1, p1), (s2, p2) = _params(a), _params(b)
    assert s1 == s2
    for x, y in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_array_equal(x, y)


def test_sigterm_while_compiling_exits_at_once_and_resumes_exactly(tmp_path):
    cache = str(tmp_path / 'data')
    four = ['--config.train.max_steps=4', '--config.train.checkpoint_every=4']
    eight = ['--config.train.max_steps=8', '--config.train.checkpoint_every=4']
    straight = tmp_path / 'straight'
    subprocess.run(_train_cmd(straight, cache, *SLOW_COMPILE, *eight), env=_env(), check=True,
                   capture_output=True, timeout=900)
    wd = tmp_path / 'wd'
    subprocess.run(_train_cmd(wd, cache, *SLOW_COMPILE, *four), env=_env(), check=True,
                   capture_output=True, timeout=900)
    # the resumed run compiles its step again (the scipy matcher's callback
    # keeps it out of the persistent cache): interrupted in the middle
    proc = _start(wd, cache, *eight, '--config.train.log_every=1')
    _wait_for(proc, 'compiling the train step')
    time.sleep(1.0)
    took, out, err = _sigterm_and_time(proc)
    assert proc.returncode == 0, err[-3000:]
    assert 'step 5/' not in out, 'a step ran: the signal came after the compilation'
    assert 'SIGTERM: nothing trained since the checkpoint of step 4; exiting' in out, out
    assert took < 10, f'{took:.1f}s from SIGTERM to exit'
    subprocess.run(_train_cmd(wd, cache, *SLOW_COMPILE, *eight), env=_env(), check=True,
                   capture_output=True, timeout=900)
    _assert_same_params(straight, wd)


def test_sigterm_while_evaluating_exits_at_once_with_the_final_checkpoint(tmp_path):
    cache = str(tmp_path / 'data')
    wd = tmp_path / 'wd'
    args = ['--config.train.max_steps=4', '--config.train.checkpoint_every=100',
            '--config.train.log_every=1', '--config.train.eval_every=-1', '--mode=train_and_eval']
    proc = _start(wd, cache, *args)
    _wait_for(proc, 'step 4/4')  # the last step: its checkpoint, then the evaluation
    took, out, err = _sigterm_and_time(proc)
    assert proc.returncode == 0, err[-3000:]
    assert 'SIGTERM: nothing trained since the checkpoint of step 4; exiting' in out, out
    assert took < 10, f'{took:.1f}s from SIGTERM to exit'
    assert _params(wd)[0] == 4
    r = subprocess.run(_train_cmd(wd, cache, *SLOW_COMPILE, *args), env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'resumed from step 4' in r.stdout and (wd / 'eval' / 'metrics_4.json').exists()


def test_a_save_that_fails_stops_the_run_at_the_next_log_step(tmp_path):
    cache = str(tmp_path / 'data')
    wd = tmp_path / 'wd'
    proc = _start(wd, cache, '--config.train.max_steps=100000', '--config.train.log_every=5',
                  '--config.train.checkpoint_every=5')
    _wait_for(proc, ' 5/100000')  # the first progress line
    # the file system under the checkpoints breaks: the folder becomes a file
    ck = wd / 'checkpoints'
    deadline = time.time() + 60
    while not any(p.name == '5' for p in ck.iterdir()) and time.time() < deadline:
        time.sleep(0.1)
    os.rename(ck, wd / 'checkpoints.moved')
    ck.write_text('not a folder')
    t = time.time()
    proc.communicate(timeout=300)
    err = _log(proc)
    assert proc.returncode != 0
    assert 'checkpoints' in err[-3000:], err[-3000:]
    assert time.time() - t < 60
