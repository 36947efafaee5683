"""launch/: the TPU VM scripts. Syntax (`bash -n`), `shellcheck` (Debian's;
CI installs it), the exact gcloud commands every script prints with
--dry-run, and the scripts run for real against `tests/fake_gcloud/gcloud`
(one worker that is this machine): create is idempotent, a run starts in
the background, a second start of the same run name is refused while it
runs, stop ends it with SIGTERM, delete is idempotent."""
import os
import shutil
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch')
SCRIPTS = ['create.sh', 'setup.sh', 'run.sh', 'logs.sh', 'stop.sh', 'delete.sh']


def _commit():
    return subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short=12', 'HEAD'],
                          capture_output=True, text=True, check=True).stdout.strip()


def _jax():
    with open(os.path.join(ROOT, 'requirements.txt')) as f:
        return next(line.split('==')[1].strip() for line in f if line.startswith('jax=='))


def _script(name, *args, env=None, check=True):
    r = subprocess.run(['bash', os.path.join(LAUNCH, name), *args], capture_output=True,
                       text=True, env=env, timeout=120)
    if check:
        assert r.returncode == 0, (name, r.stdout, r.stderr)
    return r


def _argv(line):
    """The words bash reads from a printed command (what running it passes)."""
    out = subprocess.run(['bash', '-c', 'eval "set -- $1"; printf "%s\\0" "$@"', '_', line],
                         capture_output=True, text=True, check=True).stdout
    return out.split('\0')[:-1]


def test_scripts_parse_and_pass_shellcheck():
    assert sorted(f for f in os.listdir(LAUNCH) if f.endswith('.sh')) == sorted(SCRIPTS + ['lib.sh'])
    for f in SCRIPTS + ['lib.sh']:
        subprocess.run(['bash', '-n', os.path.join(LAUNCH, f)], check=True)
    if shutil.which('shellcheck') is None:
        pytest.skip('shellcheck is not installed (apt-get install shellcheck; CI has it)')
    r = subprocess.run(['shellcheck', '-x', *SCRIPTS, 'lib.sh'], cwd=LAUNCH, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout


def test_dry_run_prints_the_exact_gcloud_commands(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), PATH='/usr/bin:/bin')  # no gcloud needed
    c = _commit()
    r = _script('create.sh', '--name', 'detr', '--zone', 'us-west4-a', '--type', 'v5litepod-16',
                '--spot', '--dry-run', env=env)
    assert r.stdout.splitlines() == [
        'gcloud compute tpus tpu-vm create detr --zone us-west4-a --accelerator-type '
        'v5litepod-16 --version v2-alpha-tpuv5-lite --spot']
    r = _script('create.sh', '--name', 'detr', '--zone', 'us-central2-b', '--type', 'v4-16',
                '--queued', '--dry-run', env=env)
    assert r.stdout.splitlines() == [
        'gcloud compute tpus queued-resources create detr --node-id detr --zone us-central2-b '
        '--accelerator-type v4-16 --runtime-version tpu-ubuntu2204-base']
    r = _script('setup.sh', '--name', 'detr', '--zone', 'z', '--dry-run', env=env)
    lines = r.stdout.splitlines()
    assert lines[0] == (f'gcloud compute tpus tpu-vm scp {tmp_path}/detr_jax-{c}.tar.gz '
                        f'detr:detr_jax-{c}.tar.gz --zone z --worker=all')
    argv = _argv(lines[1])
    assert argv[:9] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'detr', '--zone', 'z',
                        '--worker=all'] and argv[9] == '--command' and len(argv) == 11
    remote = argv[10]
    assert f"install -q -e \"$d\" 'jax[tpu]=={_jax()}'" in remote
    assert f'd=$HOME/detr_jax/{c}' in remote and 'if [ -f "$d/.ready" ]' in remote
    assert (tmp_path / f'detr_jax-{c}.tar.gz').stat().st_size > 10_000  # the commit's code
    r = _script('run.sh', '--name', 'detr', '--zone', 'z', '--run', 'r50', '--config',
                'configs/detr_r50.py', '--workdir', 'gs://b/r50', '--dry-run', '--',
                '--config.train.epochs=150', env=env)
    argv = _argv(r.stdout.strip())
    assert argv[:10] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'detr', '--zone', 'z',
                         '--worker=all', '--command']
    assert ('nohup .venv/bin/python -m detr_jax.main --config=configs/detr_r50.py '
            '--workdir=gs://b/r50 --config.train.epochs=150 >> $HOME/runs/r50.log') in argv[10]
    r = _script('logs.sh', '--name', 'detr', '--zone', 'z', '--run', 'r50', '--dry-run', env=env)
    assert r.stdout.splitlines() == [
        "gcloud compute tpus tpu-vm ssh detr --zone z --worker=0 --command "
        "tail\\ -n\\ 100\\ -F\\ \\$HOME/runs/r50.log"]
    r = _script('stop.sh', '--name', 'detr', '--zone', 'z', '--run', 'r50', '--dry-run', env=env)
    argv = _argv(r.stdout.strip())
    assert argv[:10] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'detr', '--zone', 'z',
                         '--worker=all', '--command'] and 'kill -TERM "$pid"' in argv[10]
    r = _script('delete.sh', '--name', 'detr', '--zone', 'z', '--queued', '--dry-run', env=env)
    assert r.stdout.splitlines() == [
        'gcloud compute tpus queued-resources delete detr --zone z --force --quiet']


def test_bad_arguments_are_named(tmp_path):
    r = _script('create.sh', '--name', 'x', '--zone', 'z', '--type', 'v9-8', '--dry-run',
                check=False)
    assert r.returncode == 2 and "unknown accelerator type 'v9-8'" in r.stderr
    r = _script('run.sh', '--name', 'x', '--zone', 'z', '--run', 'a/b', '--config',
                'configs/demo.py', '--workdir', 'w', '--dry-run', check=False)
    assert r.returncode == 2 and "run name 'a/b'" in r.stderr
    r = _script('run.sh', '--name', 'x', '--zone', 'z', '--run', 'a', '--config',
                'configs/nope.py', '--workdir', 'w', '--dry-run', check=False)
    assert r.returncode == 2 and "no config file 'configs/nope.py'" in r.stderr
    r = _script('stop.sh', '--name', 'x', '--run', 'a', check=False)
    assert r.returncode == 2 and 'missing --zone' in r.stderr


def test_scripts_against_a_stand_in_gcloud(tmp_path):
    """create twice (one create call), a run started, refused a second time,
    stopped by SIGTERM, started again; delete twice (one delete call)."""
    home = tmp_path / 'worker'
    home.mkdir()
    log = tmp_path / 'gcloud.log'
    env = dict(os.environ, FAKE_WORKER_HOME=str(home), FAKE_GCLOUD_LOG=str(log),
               TMPDIR=str(tmp_path),
               PATH=os.path.join(ROOT, 'tests', 'fake_gcloud') + os.pathsep + os.environ['PATH'])
    base = ['--name', 'detr', '--zone', 'z']
    assert 'exists' not in _script('create.sh', *base, '--type', 'v4-8', env=env).stdout
    assert 'TPU VM detr exists in z' in _script('create.sh', *base, '--type', 'v4-8',
                                                env=env).stdout
    # the commit as setup.sh leaves it (its pip install is not run here); a
    # python that records its arguments and exits on SIGTERM like training
    d = home / 'detr_jax' / _commit()
    (d / '.venv' / 'bin').mkdir(parents=True)
    (d / '.ready').touch()
    py = d / '.venv' / 'bin' / 'python'
    py.write_text('#!/usr/bin/env bash\necho "args: $*"\n'
                  'trap \'echo "SIGTERM: checkpoint written"; exit 0\' TERM\n'
                  'while true; do sleep 0.1; done\n')
    py.chmod(0o755)
    assert 'is set up' in _script('setup.sh', *base, env=env).stdout  # idempotent: nothing redone
    run = [*base, '--run', 'r1', '--config', 'configs/demo.py', '--workdir', 'gs://b/r1', '--',
           '--config.seed=3']
    assert 'started r1' in _script('run.sh', *run, env=env).stdout
    again = _script('run.sh', *run, env=env, check=False)
    assert again.returncode == 4 and 'run r1 is running' in again.stderr
    deadline = time.time() + 30
    runlog = home / 'runs' / 'r1.log'
    while time.time() < deadline and 'args:' not in (runlog.read_text() if runlog.exists() else ''):
        time.sleep(0.1)
    assert ('args: -m detr_jax.main --config=configs/demo.py --workdir=gs://b/r1 '
            '--config.seed=3') in runlog.read_text()
    assert 'r1 stopped' in _script('stop.sh', *base, '--run', 'r1', env=env).stdout
    assert 'SIGTERM: checkpoint written' in runlog.read_text()
    assert not (home / 'runs' / 'r1.pid').exists()
    assert 'not running' in _script('stop.sh', *base, '--run', 'r1', env=env).stdout
    assert 'started r1' in _script('run.sh', *run, env=env).stdout
    _script('stop.sh', *base, '--run', 'r1', env=env)
    _script('delete.sh', *base, env=env)
    assert 'does not exist' in _script('delete.sh', *base, env=env).stdout
    calls = log.read_text().splitlines()
    assert sum(' create ' in c for c in calls) == 1
    assert sum(' delete ' in c for c in calls) == 1
