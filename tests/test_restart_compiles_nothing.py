"""A restart loads the train step from JAX's persistent compilation cache.

The scipy solver (the configs' default) is a host callback, and JAX never
caches a program with a host callback; the train step keeps it in a program
of its own (`trainer.TrainStep`), so a second start compiles only that one
(milliseconds) and loads the model's forward and update programs. The
demo config, cut to one bucket shape so that the test compiles one shape.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(tmp_path, steps, *flags):
    env = dict(os.environ, XLA_FLAGS='', PYTHONPATH=ROOT,
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jit_cache'),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.5',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
    r = subprocess.run(
        [sys.executable, '-m', 'detr_jax.main', '--config=configs/demo.py',
         f'--workdir={tmp_path}/run', f'--config.train.max_steps={steps}',
         '--config.train.eval_every=0', '--config.data.buckets=((192,192),)',
         '--config.data.num_train=32', f'--config.data.cache_dir={tmp_path}/data', *flags],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def _compiled(line):
    """{'jit(forward_step)': 1, ...}: the summary's 'N programs compiled
    (name [xn] s, ...)' clause (`compilations.Record.summary`)."""
    clause = line.partition(' compiled (')[2].rpartition(' s)')[0] + ' s'
    return {name: int(n or 1) for name, n in re.findall(r'(\S+?)(?: x(\d+))? [0-9.]+ s', clause)}


def _line(stdout, start):
    lines = [x for x in stdout.splitlines() if x.startswith(start)]
    assert len(lines) == 1, stdout[-3000:]
    return lines[0]


def test_a_second_start_loads_the_train_step_from_the_cache(tmp_path):
    # the first start compiles the three programs (precompiled: the default)
    first = _line(_start(tmp_path, 1), '1 shapes in ')
    assert _compiled(first) == {
        'jit(forward_step)': 1, 'jit(match)': 1, 'jit(update_step)': 1}, first
    assert 'loaded' not in first, first

    # the restart, through the loop's own first call (no precompile): the
    # two large programs come from the cache; only the callback compiles
    out = _start(tmp_path, 2, '--config.train.precompile=False')
    assert 'resumed from step 1' in out, out[-2000:]
    line = _line(out, 'train step for 192x192 images: ')
    assert _compiled(line) == {'jit(match)': 1}, line
    assert re.search(r'\b2 programs loaded from the compilation cache\b', line), line
    seconds = float(re.search(r'jit\(match\) ([0-9.]+) s', line).group(1))
    assert seconds < 5, line  # a callback and nothing else

    # and with precompile (the default), the same
    line = _line(_start(tmp_path, 3), '1 shapes in ')
    assert _compiled(line) == {'jit(match)': 1}, line
    assert '2 programs loaded from the compilation cache' in line, line
