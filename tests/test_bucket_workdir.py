"""A workdir on a real object store: a GCS emulator (`gcp-storage-emulator`,
from the test extra) started here on 127.0.0.1. Training with
`--workdir=gs://bucket/run` writes its checkpoints, evaluation json and
pictures to the bucket (and with `--config.data.cache_dir=gs://...` the
synthetic set, which it then reads from there, and JAX's compilation
cache); killed with SIGKILL it resumes from the bucket to the
parameters of an uninterrupted run.

The emulator runs through `tests/gcs_emulator.py` (it adds the generation
header real GCS sends and tensorstore needs). Pointed at it: epath through
fsspec/gcsfs (`EPATH_USE_TF=false`, `STORAGE_EMULATOR_HOST`) and orbax's
arrays through tensorstore
(`TENSORSTORE_GCS_HTTP_URL`). TensorFlow's GCS file system has no endpoint
setting, so TensorBoard goes to a local folder (`train.tensorboard_dir`); its
bucket path is TensorFlow's own.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from test_shards import _free_port
from test_train import _env, _train_cmd

BUCKET = 'detr-test'


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
def bucket_env(emulator):
    """The environment of processes that talk to the emulator (this one
    does not: epath caches its choice of backend for the process)."""
    env = dict(_env(), EPATH_USE_TF='false', STORAGE_EMULATOR_HOST=emulator,
               TENSORSTORE_GCS_HTTP_URL=emulator)
    env.pop('JAX_COMPILATION_CACHE_DIR', None)  # the run's default: <workdir>/jit_cache
    return env


# what a user's script reads back from the bucket: the eval folder and the
# weights (saved to a local .npz for the comparison)
READER = r'''
import json, sys
import jax, numpy as np
from etils import epath
from detr_jax import checkpoints
out = {}
for wd in sys.argv[2:]:
    ev = epath.Path(wd) / 'eval'
    _, variables, step = checkpoints.load_workdir(wd)
    np.savez(f'{sys.argv[1]}/{wd.rsplit("/", 1)[1]}.npz',
             *[np.asarray(x) for x in jax.tree_util.tree_leaves(variables)])
    out[wd] = {'names': sorted(p.name for p in ev.iterdir()), 'step': step,
               'png': (ev / 'predictions_40.png').read_bytes()[:4].hex()}
print(json.dumps(out))
'''


def _cmd(workdir, cache_dir, *extra):
    """Training with the final evaluation (its json and picture go to the bucket)."""
    return _train_cmd(workdir, cache_dir, *extra, '--mode=train_and_eval')


def _names(endpoint, prefix):
    """The object names under gs://BUCKET/prefix, listed with the GCS JSON
    API (gcsfs, like any fsspec file system, caches listings)."""
    import urllib.parse
    import urllib.request
    q = urllib.parse.urlencode({'prefix': prefix})
    with urllib.request.urlopen(f'{endpoint}/storage/v1/b/{BUCKET}/o?{q}', timeout=10) as r:
        return [o['name'] for o in json.load(r).get('items', [])]


def _steps(endpoint, run):
    """Step folders under gs://BUCKET/run/checkpoints/."""
    names = _names(endpoint, f'{run}/checkpoints/')
    return {int(n.split('/')[2]) for n in names if n.split('/')[2].isdigit()}


def _objects(endpoint, prefix):
    """The base names of the objects under gs://BUCKET/prefix."""
    return {n.rsplit('/', 1)[-1] for n in _names(endpoint, prefix)}


def test_gs_workdir_resumes_after_sigkill_like_an_uninterrupted_run(tmp_path, emulator, bucket_env):
    cache = str(tmp_path / 'data')
    args = ['--config.train.max_steps=40', '--config.train.checkpoint_every=4',
            '--config.train.eval_every=-1', '--config.train.num_vis_images=2']
    full = f'gs://{BUCKET}/full'
    # this run's synthetic set is written to and read from the bucket; the
    # other's is local, and they end bitwise equal
    r = subprocess.run(_cmd(full, f'gs://{BUCKET}/data', *args,
                            f'--config.train.tensorboard_dir={tmp_path}/tb1'),
                       env=bucket_env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _objects(emulator, 'data/') >= {'instances_train.json', 'instances_val.json', 'DONE'}
    assert not os.path.exists(cache)
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
    # the restart loaded the train step from the compilation cache in the bucket
    assert _objects(emulator, 'killed/jit_cache/')
    assert re.search(r'^1 shapes in .*: 2 programs loaded from the compilation cache',
                     r.stdout, re.M), r.stdout[-2000:]
    # nothing of the run landed on the local disk under a mangled 'gs:' folder
    assert not os.path.exists(os.path.join(os.getcwd(), 'gs:'))
    assert list((tmp_path / 'tb2').glob('events.out.tfevents.*'))
    r = subprocess.run([sys.executable, '-c', READER, str(tmp_path), full, killed],
                       env=bucket_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    read = json.loads(r.stdout.strip().splitlines()[-1])
    for wd in (full, killed):
        assert {'results_40.json', 'metrics_40.json', 'predictions_40.png'} <= set(
            read[wd]['names']), read[wd]
        assert read[wd]['png'] == '89504e47' and read[wd]['step'] == 40  # a PNG; the last step
    a, b = np.load(tmp_path / 'full.npz'), np.load(tmp_path / 'killed.npz')
    assert len(a.files) == len(b.files) > 50
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])  # bitwise, as a local workdir resumes


def test_tensorboard_goes_to_a_non_local_file_system(tmp_path):
    """TensorBoard's writer cannot reach the emulator (above), so its path
    handling is tested on TensorFlow's in-memory file system: the event
    files land under `ram://`, not in a local folder named 'ram:'."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    import tiny_config
    from detr_jax import train
    c = tiny_config.get_config()
    c.data.cache_dir = str(tmp_path / 'data')
    c.train.update(max_steps=2, log_every=1, checkpoint_every=2, tensorboard_dir='ram://tb/run')
    train.train_and_evaluate(c, str(tmp_path / 'wd'))
    files = tf.io.gfile.glob('ram://tb/run/events.out.tfevents.*')
    assert files
    tags = set()
    for record in tf.data.TFRecordDataset(files):
        event = event_pb2.Event.FromString(record.numpy())
        tags |= {(event.step, v.tag) for v in event.summary.value}
    assert {(1, 'train/loss'), (2, 'train/loss'), (2, 'train/loss_giou')} <= tags, sorted(tags)
    assert not os.path.exists(os.path.join(os.getcwd(), 'ram:'))
    assert not list(tmp_path.glob('wd/events.out.tfevents.*'))
