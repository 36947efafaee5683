"""Which XLA programs a piece of work compiled, and which it loaded from
JAX's persistent compilation cache instead.

    with compilations.record() as rec:
        state, metrics = trainer.train_step(state, batch, rng)
    rec.compiled  # [('update_step', 41.2)]: (program, seconds)
    rec.loaded    # [('forward_step', 0.4)]

Read from `jax.monitoring` events: every compilation request ends with a
'/jax/core/compile/backend_compile_duration' event naming the program; a
request served by the persistent cache records '/jax/compilation_cache/
cache_hits' first, in the same thread. Programs found in jit's in-memory
cache make no request and appear in neither list.
"""
import contextlib
import dataclasses
import threading
from typing import List, Tuple

import jax

_HIT = '/jax/compilation_cache/cache_hits'
_COMPILE = '/jax/core/compile/backend_compile_duration'

_active = []  # the open records
_thread = threading.local()  # .hit: this thread's request was a cache hit
_lock = threading.Lock()
_listening = False


@dataclasses.dataclass
class Record:
    compiled: List[Tuple[str, float]] = dataclasses.field(default_factory=list)
    loaded: List[Tuple[str, float]] = dataclasses.field(default_factory=list)

    def summary(self):
        """'2 programs loaded from the compilation cache (0.6 s), 1 compiled
        (match 0.1 s)'; a program met n times shows as 'name xn'."""
        parts = []
        if self.loaded:
            parts.append(f'{_count(self.loaded)} loaded from the compilation cache '
                         f'({sum(s for _, s in self.loaded):.1f} s)')
        if self.compiled:
            parts.append(f'{_count(self.compiled)} compiled ({_by_name(self.compiled)})')
        return ', '.join(parts) or 'nothing compiled'


def _count(entries):
    return f'{len(entries)} program{"s" * (len(entries) != 1)}'


def _by_name(entries):
    totals = {}
    for name, seconds in entries:
        n, t = totals.get(name, (0, 0.0))
        totals[name] = (n + 1, t + seconds)
    return ', '.join(f'{name}{f" x{n}" if n > 1 else ""} {t:.1f} s'
                     for name, (n, t) in totals.items())


def _on_event(event, **kwargs):
    if event == _HIT:
        _thread.hit = True


def _on_duration(event, seconds, **kwargs):
    if event != _COMPILE:
        return
    hit, _thread.hit = getattr(_thread, 'hit', False), False
    entry = (str(kwargs.get('fun_name', '?')), float(seconds))
    with _lock:
        for rec in _active:
            (rec.loaded if hit else rec.compiled).append(entry)


@contextlib.contextmanager
def record():
    """Collects the compilations made (in any thread) while it is open."""
    global _listening
    with _lock:
        if not _listening:
            jax.monitoring.register_event_listener(_on_event)
            jax.monitoring.register_event_duration_secs_listener(_on_duration)
            _listening = True
        rec = Record()
        _active.append(rec)
    try:
        yield rec
    finally:
        with _lock:
            _active.remove(rec)
