"""Entry point: python -m detr_jax.main --config=configs/X.py --workdir=DIR
[--mode=train|eval|train_and_eval] [--config.a.b=value ...]."""
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, logs, results and pictures go here.')
flags.DEFINE_enum('mode', 'train_and_eval', ['train', 'eval', 'train_and_eval'], 'What to run.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    from detr_jax import train  # after flags: keeps --help fast
    logging.set_verbosity(logging.INFO)
    if FLAGS.mode == 'eval':
        train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)
        return
    config = FLAGS.config
    if FLAGS.mode == 'train':
        with config.unlocked():
            config.train.eval_every = 0
    train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == '__main__':
    app.run(main)
