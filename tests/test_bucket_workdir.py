"""A workdir on a real object store: a GCS emulator (`gcp-storage-emulator`,
from the test extra) started here on 127.0.0.1. Training with
`--workdir=gs://bucket/run` writes its checkpoints, evaluation json and
pictures to the bucket; killed with SIGKILL it resumes from the bucket to the
parameters of an uninterrupted run.

The emulator runs through `tests/gcs_emulator.py` (it adds the generation
header real GCS sends and tensorstore needs). Pointed at it: epath through fsspec/gcsfs (`EPATH_USE_TF=false`,
`STORAGE_EMULATOR_HOST`) and orbax's arrays through tensorstore
(`TENSORSTORE_GCS_HTTP_URL`). TensorFlow's GCS file system has no endpoint
setting, so TensorBoard goes to a local folder (`train.tensorboard_dir`); its
bucket path is TensorFlow's own.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from test_train import _env, _train_cmd
from detr_jax import checkpoints

BUCKET = 'detr-test'


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def emulator(tmp_path_factory):
    """The emulator's endpoint, with the bucket created; stopped afterwards."""
    port = _free_port()
    data = tmp_path_factory.mktemp('gcs')
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gcs_emulator.py')
    proc = subprocess.Popen([sys.executable, script, str(data), str(port), BUCKET],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail('the GCS emulator did not start')
    yield f'http://127.0.0.1:{port}'
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def bucket_env(emulator, monkeypatch):
    """This process and its children talk to the emulator."""
    env = {'EPATH_USE_TF': 'false', 'STORAGE_EMULATOR_HOST': emulator,
           'TENSORSTORE_GCS_HTTP_URL': emulator}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return dict(_env(), **env)


def _cmd(workdir, cache_dir, *extra):
    """Training with the final evaluation (its json and picture go to the bucket)."""
    return _train_cmd(workdir, cache_dir, *extra, '--mode=train_and_eval')


def _steps(endpoint, run):
    """Step folders under gs://BUCKET/run/checkpoints/, listed with the GCS
    JSON API (gcsfs, like any fsspec file system, caches listings)."""
    import json
    import urllib.parse
    import urllib.request
    q = urllib.parse.urlencode({'prefix': f'{run}/checkpoints/'})
    with urllib.request.urlopen(f'{endpoint}/storage/v1/b/{BUCKET}/o?{q}', timeout=10) as r:
        names = [o['name'] for o in json.load(r).get('items', [])]
    return {int(n.split('/')[2]) for n in names if n.split('/')[2].isdigit()}


def test_gs_workdir_resumes_after_sigkill_like_an_uninterrupted_run(tmp_path, emulator, bucket_env):
    from etils import epath
    cache = str(tmp_path / 'data')
    args = ['--config.train.max_steps=40', '--config.train.checkpoint_every=4',
            '--config.train.eval_every=-1', '--config.train.num_vis_images=2']
    full = f'gs://{BUCKET}/full'
    r = subprocess.run(_cmd(full, cache, *args, f'--config.train.tensorboard_dir={tmp_path}/tb1'),
                       env=bucket_env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    killed = f'gs://{BUCKET}/killed'
    cmd = _cmd(killed, cache, *args, f'--config.train.tensorboard_dir={tmp_path}/tb2')
    proc = subprocess.Popen(cmd, env=bucket_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        # a save starts once the one before is complete: with step 8's
        # folder there, step 4's checkpoint is whole
        if any(s >= 8 for s in _steps(emulator, 'killed')):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
    assert max(_steps(emulator, 'killed')) < 40
    r = subprocess.run(cmd, env=bucket_env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'resumed from step' in r.stdout
    # nothing of the run landed on the local disk under a mangled 'gs:' folder
    assert not os.path.exists(os.path.join(os.getcwd(), 'gs:'))
    for wd in (full, killed):
        names = {p.name for p in (epath.Path(wd) / 'eval').iterdir()}
        assert {'results_40.json', 'metrics_40.json', 'predictions_40.png'} <= names, names
        assert (epath.Path(wd) / 'eval' / 'predictions_40.png').read_bytes()[:4] == b'\x89PNG'
    assert list((tmp_path / 'tb2').glob('events.out.tfevents.*'))
    _, a, s1 = checkpoints.load_workdir(full)
    _, b, s2 = checkpoints.load_workdir(killed)
    assert s1 == s2 == 40
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)  # bitwise, as a local workdir resumes
