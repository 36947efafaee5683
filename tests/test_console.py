"""What a person sees: the demo config prints progress lines (step, steps/s,
ETA, the main loss terms), the evaluation's AP with the path of its
picture and a summary; library INFO lines (orbax, TensorFlow, clu) only
with --verbosity=1."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# an absl/glog-style INFO line ("I1203 10:23:16.322 file.py:5] ...", "I0000 00:00:...")
INFO_LINE = re.compile(r'^I\d{4} ', re.M)


def _run(tmp_path, config, *flags):
    cmd = [sys.executable, '-m', 'detr_jax.main', f'--config={config}',
           f'--workdir={tmp_path}/wd', f'--config.data.cache_dir={tmp_path}/data',
           '--config.train.max_steps=4', '--config.train.log_every=2',
           '--config.train.checkpoint_every=4', '--config.train.eval_every=-1',
           '--config.train.precompile=False', *flags]
    env = dict(os.environ, XLA_FLAGS='', PYTHONPATH=ROOT)
    env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # as a user's shell has it
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_demo_console_is_quiet_and_useful(tmp_path):
    r = _run(tmp_path, 'configs/demo.py', '--config.data.num_train=64',
             '--config.data.num_val=16')
    out = r.stdout
    assert re.search(r'^step 2/4 \(50%\) \| [0-9.]+ steps/s \| ETA \S+ \| loss [0-9.]+ \| '
                     r'ce [0-9.]+ \| bbox [0-9.]+ \| giou [0-9.]+$', out, re.M), out
    assert re.search(r'^step 4/4 \(100%\) ', out, re.M), out
    pic = f'{tmp_path}/wd/eval/predictions_4.png'
    assert re.search(r'^eval at step 4 \(16 images, \d+s\): AP [0-9.]+ \| AP50 [0-9.]+ \| '
                     r'AP75 [0-9.]+ -> ' + re.escape(pic) + '$', out, re.M), out
    assert os.path.exists(pic)
    assert re.search(r'^done: 4 steps in \S+\n  final evaluation: AP ', out, re.M), out
    both = r.stdout + r.stderr
    assert not INFO_LINE.search(both), INFO_LINE.findall(both)[:5]
    for noise in ('oneDNN', 'absl::InitializeLog', 'orbax', 'train/loss'):
        assert noise not in both, noise
    # --mode=eval needs only the workdir: the run's config is stored with it
    cmd = [sys.executable, '-m', 'detr_jax.main', '--mode=eval', f'--workdir={tmp_path}/wd']
    env = dict(os.environ, XLA_FLAGS='', PYTHONPATH=ROOT)
    ev = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert 'evaluating step 4 of' in ev.stdout and 'with its stored config' in ev.stdout
    assert re.search(r'^eval at step 4 \(16 images, \d+s\): AP ', ev.stdout, re.M), ev.stdout


def test_verbosity_1_shows_the_libraries_logs(tmp_path):
    r = _run(tmp_path, 'tests/tiny_config.py', '--verbosity=1')
    assert INFO_LINE.search(r.stderr) and 'train/loss=' in r.stderr
    assert re.search(r'^step 4/4 \(100%\) ', r.stdout, re.M)
