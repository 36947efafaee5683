"""SIGTERM (a preempted spot TPU VM: about 30 s of notice) -> a usable
checkpoint and a prompt exit, whatever the run is doing.

The training loop tells `Preemption` whether the state in memory is one a
restart reproduces exactly (`clean`: the checkpoint just written, the one
restored, or the fresh start) or holds steps no checkpoint has (`dirty`).

- Clean (compiling, evaluating, loading the first batches, waiting on a
  save): a watchdog thread, woken by the signal itself through
  `signal.set_wakeup_fd` (a Python signal handler would wait for the main
  thread, which can be inside a compilation for minutes), waits for the
  checkpoint being written and ends the process at once.
- Dirty (training steps, each short): the main loop sees the request and
  writes a checkpoint. With several processes the request travels inside
  the train step (`stop_requested`, reduced over every host with the step's
  own collectives), so all of them stop after the same step and save it
  together; a process that stopped alone would leave the others waiting in
  a collective.

The loop keeps the dirty phases short: it writes a checkpoint before
anything long that is not a train step (a new bucket shape's compilation,
an evaluation).
"""
import logging
import os
import signal
import socket
import threading

from detr_jax import console


class Preemption:
    """Installs the SIGTERM handler and its watchdog; `restore()` removes them.

    `before_exit`: callables run (in order) before a clean exit, e.g. waiting
    for the checkpoint being written and flushing the metric writer."""

    def __init__(self, before_exit=()):
        self.requested = False
        self.before_exit = list(before_exit)
        self._clean_step = None   # a step number, or None while dirty
        self._lock = threading.Lock()
        self._old_handler = signal.signal(signal.SIGTERM, self._handle)
        self._recv, send = socket.socketpair()
        send.setblocking(False)
        self._send = send
        self._old_fd = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name='sigterm-watchdog', daemon=True)
        self._thread.start()

    def _handle(self, signum, frame):
        self.requested = True

    def _watch(self):
        while True:
            try:
                data = self._recv.recv(64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                self.requested = True
                logging.warning('SIGTERM received')
                self._exit_if_clean()

    def _exit_if_clean(self):
        with self._lock:
            step = self._clean_step
            if step is None:
                return  # the loop checkpoints at its next step
            for fn in self.before_exit:
                try:
                    fn()
                except Exception as e:  # noqa: BLE001  (exiting anyway: say why)
                    logging.error('before exiting on SIGTERM: %s', e)
            what = 'the start' if step == 0 else f'the checkpoint of step {step}'
            console.say(f'SIGTERM: nothing trained since {what}; exiting')
            logging.shutdown()
            os._exit(0)

    def clean(self, step):
        """The state in memory is checkpointed at `step` (or is the fresh
        start, step 0). A pending SIGTERM ends the process now."""
        self._clean_step = int(step)
        if self.requested:
            self._exit_if_clean()

    def dirty(self):
        """Steps beyond the last checkpoint are about to run."""
        with self._lock:
            self._clean_step = None

    def restore(self):
        signal.signal(signal.SIGTERM, self._old_handler)
        signal.set_wakeup_fd(self._old_fd)
        self._recv.shutdown(socket.SHUT_RDWR)  # wakes the watchdog's recv: it returns
        self._thread.join(timeout=5)
        self._send.close()
        self._recv.close()
