"""What a person running detr_jax sees: one progress line per log interval,
each evaluation's AP, a summary at the end, on standard output of process 0.

Library detail (orbax, TensorFlow, clu's metric lines, our own INFO logs)
goes to the log, which is shown with `--verbosity=1` (INFO) or more;
warnings and errors always are.
"""
import contextlib
import os
import sys
import time

import jax

# the loss terms a progress line shows (the log and TensorBoard have them all)
_MAIN_TERMS = (('loss', 'loss'), ('ce', 'loss_ce'), ('bbox', 'loss_bbox'), ('giou', 'loss_giou'),
               ('mask', 'loss_mask'), ('dice', 'loss_dice'))


def set_verbosity(verbosity):
    """0 (the default): warnings and our console lines only; 1: INFO logs of
    every library too; 2 or more: DEBUG."""
    from absl import logging as absl_logging
    level = {0: absl_logging.WARNING, 1: absl_logging.INFO}.get(
        max(verbosity, 0), absl_logging.DEBUG)
    absl_logging.set_verbosity(level)
    if verbosity < 1:
        os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


@contextlib.contextmanager
def quiet_native_stderr(quiet=True):
    """Native libraries' start-up lines (TensorFlow's oneDNN notice, absl's
    "before InitializeLog" line) are written to file descriptor 2 while
    they load, before any log level applies; with `quiet` that descriptor
    points at /dev/null for the duration. Python exceptions still surface."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def percent(value):
    """A COCO figure (a fraction) in percent; None (undefined) as 'n/a'."""
    return 'n/a' if value is None else f'{100 * value:.1f}'


def format_metrics(metrics, names=('PQ', 'PQ_th', 'PQ_st', 'AP', 'AP50', 'AP75')):
    """`AP 52.9 | AP50 84.8 | AP75 60.1` (COCO figures in percent; PQ
    first when there is one)."""
    return ' | '.join(f'{k} {percent(metrics[k])}' for k in names if k in metrics)


def say(message):
    """A line for the person at the terminal (process 0 only)."""
    if jax.process_index() == 0:
        print(message, flush=True)


def duration(seconds):
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s' if m else f'{s}s'


class Progress:
    """`step 400/20000 (2%) | 27.1 steps/s | ETA 12m03s | loss 20.1 | ce 1.95 | ...`"""

    def __init__(self, total_steps):
        self.total = total_steps

    def line(self, step, means, steps_per_sec):
        eta = (self.total - step) / steps_per_sec if steps_per_sec > 0 else float('nan')
        width = len(str(self.total))
        parts = [f'step {step:>{width}d}/{self.total} ({100 * step // max(self.total, 1)}%)',
                 f'{steps_per_sec:.1f} steps/s', f'ETA {duration(eta) if eta == eta else "?"}']
        parts += [f'{short} {means[key]:.3f}' for short, key in _MAIN_TERMS if key in means]
        say(' | '.join(parts))


def eval_line(step, metrics, num_images, seconds, picture=None, detections='best_class'):
    """`detections`: how they were read off the heads, named unless the
    original's way ('best_class')."""
    where = f' -> {picture}' if picture else ''
    kind = '' if detections == 'best_class' else f', {detections} detections'
    say(f'eval at step {step} ({num_images} images{kind}, {seconds:.0f}s): '
        f'{format_metrics(metrics)}{where}')


def summary(result, seconds, workdir, steps):
    lines = [f'done: {steps} steps in {duration(seconds)}']
    ap = {k: v for k, v in result.items() if not k.startswith('train/')}
    if ap:
        lines.append(f'  final evaluation: {format_metrics(ap)}')
    lines.append(f'  workdir {workdir}: checkpoints/, eval/ (results json, metrics json, '
                 f'pictures), TensorBoard logs (tensorboard --logdir {workdir})')
    say('\n'.join(lines))



class Bar:
    """`predict [#######.......] 14/32 images | 3.2/s | ETA 6s` on stderr:
    redrawn in place on a terminal, otherwise a line at every tenth."""

    def __init__(self, total, label='', unit='images', stream=None, width=24):
        self.total, self.label, self.unit, self.width = total, label, unit, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.done, self.start, self.tenth = 0, time.time(), 0

    def text(self):
        rate = self.done / max(time.time() - self.start, 1e-9)
        fill = self.width * self.done // max(self.total, 1)
        eta = (self.total - self.done) / rate if rate > 0 else float('nan')
        return (f'{self.label} [{"#" * fill}{"." * (self.width - fill)}] '
                f'{self.done}/{self.total} {self.unit} | {rate:.1f}/s | '
                f'ETA {duration(eta) if eta == eta else "?"}')

    def update(self, n=1):
        self.done += n
        if self.tty:
            print('\r' + self.text(), end='', file=self.stream, flush=True)
        elif 10 * self.done // max(self.total, 1) > self.tenth or self.done == self.total:
            self.tenth = 10 * self.done // max(self.total, 1)
            print(self.text(), file=self.stream, flush=True)

    def close(self):
        if self.tty:
            print(file=self.stream, flush=True)
