"""Entry point: python -m detr_jax.main --config=configs/X.py --workdir=DIR
[--mode=train|eval|train_and_eval] [--config.a.b=value ...].

The console shows progress, evaluations and a summary; `--verbosity=1`
adds the INFO logs of every library (orbax, TensorFlow, clu's metric lines).

Several hosts: on a TPU VM slice every worker runs the same command and
`jax.distributed` finds its peers by itself; elsewhere (GPU hosts, or
processes on one machine) give --coordinator_address=HOST:PORT,
--num_processes and --process_id.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A configs/*.py file (optional with '
                                '--mode=eval: the workdir stores its run\'s).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, logs, results and pictures go here.')
flags.DEFINE_enum('mode', 'train_and_eval', ['train', 'eval', 'train_and_eval'], 'What to run.')
flags.DEFINE_string('coordinator_address', '', 'host:port of process 0 (multi-process).')
flags.DEFINE_integer('num_processes', 1, 'Processes in a multi-process run.')
flags.DEFINE_integer('process_id', 0, 'This process, 0..num_processes-1.')
flags.DEFINE_integer('heartbeat_timeout', 100, 'Seconds without news from a process after '
                     'which the others give it up for lost and exit (multi-process).')
flags.mark_flags_as_required(['workdir'])


def init_distributed():
    """jax.distributed for multi-process runs; a no-op for one process."""
    import jax
    if FLAGS.coordinator_address:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id,
                                   heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
    elif ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''):  # a multi-host TPU slice
        jax.distributed.initialize(heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
    if jax.process_count() > 1:
        logging.info('process %d of %d, %d local / %d global devices', jax.process_index(),
                     jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    from detr_jax import console  # after flags: keeps --help fast
    console.set_verbosity(FLAGS.verbosity)
    with console.quiet_native_stderr(FLAGS.verbosity < 1):
        import tensorflow  # noqa: F401  (its start-up lines; tf.data needs it anyway)
    from detr_jax import evaluate, train
    if FLAGS.mode != 'eval' and FLAGS.config is None:
        raise app.UsageError('--config is required to train (--mode=eval can do without: it '
                             'reads the config stored in --workdir)')
    init_distributed()
    try:
        if FLAGS.mode == 'eval':  # the run's stored config, and what the command line changes
            overrides = config_flags.get_override_values(FLAGS['config']) if FLAGS.config else {}
            evaluate.evaluate_checkpoint(FLAGS.workdir, FLAGS.config, overrides)
            return
        config = FLAGS.config
        if FLAGS.mode == 'train':
            with config.unlocked():
                config.train.eval_every = 0
        train.train_and_evaluate(config, FLAGS.workdir)
    except Exception:  # noqa: BLE001
        _exit_now(1)


def _exit_now(code):
    """Reports the exception and ends the process at once: after a failed
    save, orbax's background threads wait minutes for signals that never
    come, and a multi-host peer may wait in a collective."""
    import sys
    import traceback
    traceback.print_exc()
    err = sys.exc_info()[1]
    print(f'detr_jax: {type(err).__name__}: {err}', file=sys.stderr, flush=True)
    logging.flush()
    sys.stdout.flush()
    os._exit(code)


if __name__ == '__main__':
    app.run(main)
