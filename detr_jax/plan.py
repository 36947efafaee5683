"""Plan a config for a TPU slice without having one: `detr-jax plan`.

    detr-jax plan --config=configs/detr_r50.py --topology=v5e:4x4 [--per_chip=N]
        [--image_size=HxW] [--steps=train,eval] [--no_fit] [--json] [--config.a.b=v ...]

The config's train and eval steps are built by `trainer.build_trainer`,
exactly as training builds them, on a mesh over the devices of a TPU
topology that libtpu describes (no TPU needed: `pip install -e
'.[tpu-plan]'`), and compiled by the real TPU compiler. For each step the
plan reports, per device:

- HBM: arguments, temporaries, outputs (`compiled.memory_analysis()`)
  against the chip's capacity (the train step runs as three programs,
  `trainer.TrainStep`: its HBM is that of the one that needs most, its
  FLOPs and bytes their sums; `Programs`);
- FLOPs and bytes accessed per step (`compiled.cost_analysis()`);
- the collectives in the compiled HLO (kind, count, bytes) and the host
  callbacks (the scipy matcher) with the shapes each device sends;
- the roofline lower bound of the step time, max(FLOPs / peak FLOP/s,
  bytes / HBM bandwidth) from the chip's published figures (`CHIPS`), hence
  an upper bound on images/s and lower bounds on one COCO epoch (118,287
  images) and on the config's schedule;
- the largest per-chip batch that fits in HBM (a search over compilations).

"Per chip" means per JAX device. libtpu lists one device per chip on v5e,
v5p and v6e, and one per TensorCore (two per chip) on v3 and v4; the
figures of `CHIPS` are then halved per device.
"""
import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import sys
import time

import jax
import jax.numpy as jnp

from detr_jax.config_defaults import validate_config
from detr_jax.console import duration, quiet_native_stderr, set_verbosity
from detr_jax.models import validate_image_size
from detr_jax.sharding import data_sharded, make_mesh, replicated
from detr_jax.trainer import build_trainer

COCO_TRAIN_IMAGES = 118287
# the batch search stops here (DETR recipes use 1-8 images per chip)
MAX_PER_CHIP = 64


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip figures of a TPU generation."""
    generation: str          # the topology name's prefix: 'v5e'
    device_kind: str         # what libtpu's devices report: 'TPU v5 lite'
    hbm_bytes: int
    bf16_flops_per_s: float  # peak dense bf16
    hbm_bytes_per_s: float
    source: str


# Google Cloud's TPU documentation, one page per generation (figures per chip).
CHIPS = (
    Chip('v3', 'TPU v3', 32 * 2**30, 123e12, 900e9, 'https://cloud.google.com/tpu/docs/v3'),
    Chip('v4', 'TPU v4', 32 * 2**30, 275e12, 1200e9, 'https://cloud.google.com/tpu/docs/v4'),
    Chip('v5e', 'TPU v5 lite', 16 * 2**30, 197e12, 819e9, 'https://cloud.google.com/tpu/docs/v5e'),
    Chip('v5p', 'TPU v5', 95 * 2**30, 459e12, 2765e9, 'https://cloud.google.com/tpu/docs/v5p'),
    Chip('v6e', 'TPU v6 lite', 32 * 2**30, 918e12, 1640e9, 'https://cloud.google.com/tpu/docs/v6e'),
)
# shapes libtpu accepts, one example per generation (2D tori for v5e/v6e,
# 3D for v4/v5p)
TOPOLOGY_EXAMPLES = ('v3:2x2', 'v4:2x2x1', 'v4:2x2x2', 'v5e:2x2', 'v5e:4x4', 'v5p:2x2x1',
                     'v6e:2x2', 'v6e:4x4')

_COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
                'collective-permute')
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2,
                's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8,
                'c128': 16}


class PlanError(ValueError):
    """A plan that cannot be made as asked (the message says why and how)."""


def roofline(flops, bytes_accessed, chip, devices_per_chip=1):
    """The step-time lower bound of one device: (seconds, 'compute' or
    'memory', the bound's two terms). `flops`/`bytes_accessed` per device;
    a device that is one of `devices_per_chip` TensorCores gets that share
    of the chip's peak rate and bandwidth."""
    compute = flops / (chip.bf16_flops_per_s / devices_per_chip)
    memory = bytes_accessed / (chip.hbm_bytes_per_s / devices_per_chip)
    return max(compute, memory), ('compute' if compute >= memory else 'memory'), compute, memory


def _libtpu_environment():
    """libtpu looks for a TPU VM's metadata server and takes a lock file
    unless told otherwise; neither applies to compiling without a TPU."""
    os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
    os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')


def chip_of(topology):
    generation = topology.split(':')[0].lower()
    for chip in CHIPS:
        if chip.generation == generation:
            return chip
    raise PlanError(f'unknown TPU generation in topology {topology!r}: use one of '
                    f'{[c.generation for c in CHIPS]}, as in {", ".join(TOPOLOGY_EXAMPLES)}')


@functools.lru_cache(maxsize=None)
def topology_devices(topology):
    """The devices of a TPU topology ('v5e:4x4'), from libtpu (no TPU needed)."""
    chip_of(topology)
    if importlib.util.find_spec('libtpu') is None:
        raise PlanError("planning for a TPU needs libtpu (the TPU compiler), which is not "
                        "installed: pip install -e '.[tpu-plan]'")
    _libtpu_environment()
    from absl import logging as absl_logging
    from jax.experimental import topologies
    try:  # libtpu's start-up lines, shown with --verbosity=1
        with quiet_native_stderr(absl_logging.get_verbosity() < absl_logging.INFO):
            jax.devices()  # the host's own backend first: it finds no TPU, quietly
            desc = topologies.get_topology_desc(topology_name=topology, platform='tpu')
    except Exception as e:  # libtpu's own message names the rule it broke
        raise PlanError(f'libtpu does not know the topology {topology!r} ({_first_line(e)}); '
                        f'valid names are GENERATION:SHAPE, e.g. {", ".join(TOPOLOGY_EXAMPLES)}'
                        ) from None
    return tuple(desc.devices)


def _first_line(e):
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


def devices_per_chip(devices):
    return len(devices) // len({tuple(d.coords) for d in devices})


def _shape_bytes(text):
    """Bytes of every array shape in an HLO type string ('(f32[2,3]{1,0}, bf16[4])')."""
    total = 0
    for dtype, dims in re.findall(r'\b([a-z]+\d*)\[([\d,]*)\]', text):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(',') if d)
    return total


def collectives(hlo_text):
    """{kind: (count, bytes per device)} of the collectives in compiled HLO
    (asynchronous pairs counted once, at their start)."""
    out = {}
    for line in hlo_text.splitlines():
        m = re.match(r'\s*(?:ROOT )?%\S+ = (.+?) ([a-z-]+)\(', line)
        if not m:
            continue
        kind = m.group(2).removesuffix('-start')
        if kind in _COLLECTIVES and not m.group(2).endswith('-done'):
            count, size = out.get(kind, (0, 0))
            out[kind] = (count + 1, size + _shape_bytes(m.group(1)))
    return out


def host_transfers(hlo_text):
    """What each device sends to its host and receives back per step (a
    host callback, e.g. the scipy matcher's `pure_callback`, compiles to
    send/recv pairs marked `is_host_transfer`): [{'direction': 'to host' |
    'from host', 'shape': 'f32[6,1,100,100]', 'bytes': n}]."""
    found = []
    for line in hlo_text.splitlines():
        m = re.match(r'\s*(?:ROOT )?%\S+ = \((\w+\[[\d,]*\])\S*, .*? (send|recv)\(', line)
        if m and 'is_host_transfer=true' in line:
            shape = m.group(1)
            found.append({'direction': 'to host' if m.group(2) == 'send' else 'from host',
                          'shape': shape, 'bytes': _shape_bytes(shape)})
    return found


class Programs:
    """Compiled programs that run one after another (the train step's
    forward, match and update), seen as one compiled step: its HBM is that
    of the program that needs most (each holds what passes to the next as
    outputs or arguments), its FLOPs and bytes are their sums, its HLO is
    theirs together."""

    def __init__(self, compiled):
        self.compiled = dict(compiled)

    def memory_analysis(self):
        return max((c.memory_analysis() for c in self.compiled.values()), key=_hbm_total)

    def cost_analysis(self):
        total = {'flops': 0.0, 'bytes accessed': 0.0}
        for c in self.compiled.values():
            cost = c.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            for k in total:
                total[k] += float(cost.get(k, 0.0))
        return total

    def as_text(self):
        return '\n'.join(c.as_text() for c in self.compiled.values())


@dataclasses.dataclass
class StepPlan:
    step: str                 # 'train' | 'eval'
    topology: str
    chips: int                # devices (see the module docstring)
    device_kind: str
    per_chip_batch: int
    image_size: tuple
    hbm_argument_bytes: int
    hbm_temp_bytes: int
    hbm_output_bytes: int
    hbm_alias_bytes: int
    hbm_bytes_per_chip: int
    hbm_capacity_bytes: int
    flops_per_chip: float
    bytes_accessed_per_chip: float
    bytes_accessed_per_image: float
    step_time_lower_bound_s: float
    bound: str                # 'compute' | 'memory'
    compute_time_s: float
    memory_time_s: float
    images_per_s_upper_bound: float
    epoch_time_lower_bound_s: float
    schedule_time_lower_bound_s: float
    collectives: dict
    host_transfers: list
    compile_s: float
    # the search's result: fits / does not fit (None: not searched, or
    # nothing failed up to MAX_PER_CHIP)
    largest_per_chip_batch: int = None
    smallest_per_chip_batch_over: int = None

    @property
    def fits(self):
        return self.hbm_bytes_per_chip <= self.hbm_capacity_bytes


@contextlib.contextmanager
def persistent_cache_off():
    """JAX's persistent compilation cache off while open, in every thread.
    A TPU program compiled on a machine without a TPU cannot be loaded back
    there (no TPU client to deserialize it: JAX warns 'PjRtCompiler must be
    constructed with a Client'), so its entry would be dead weight (hundreds
    of MB for R50) and every later plan would warn reading it."""
    cache_on = jax.config.jax_enable_compilation_cache
    jax.config.update('jax_enable_compilation_cache', False)
    try:
        yield
    finally:
        jax.config.update('jax_enable_compilation_cache', cache_on)


class Planner:
    """Builds one config's trainer on a topology and compiles its steps for
    any per-chip batch."""

    def __init__(self, config, topology, image_size=None):
        self.chip = chip_of(topology)
        self.devices = topology_devices(topology)
        self.config, self.topology = config, topology
        self.per_device = devices_per_chip(self.devices)
        self.mesh = make_mesh(self.devices)
        largest = lambda sizes: tuple(max(sizes, key=lambda s: s[0] * s[1]))  # noqa: E731
        self.train_size = tuple(image_size or largest(config.data.buckets))
        self.eval_size = tuple(image_size or largest(config.data.eval_buckets))
        for size in {self.train_size, self.eval_size}:
            validate_image_size(config.model, *size, where='--image_size')
        self.out_of_memory = {}  # (step, per_chip) -> what the compiler said

    @property
    def n(self):
        return len(self.devices)

    def default_per_chip(self):
        batch = self.config.data.batch_size
        if batch % self.n:
            raise PlanError(f'config.data.batch_size={batch} does not divide over the {self.n} '
                            f'devices of {self.topology}: give --per_chip, or a batch size that '
                            f'is a multiple of {self.n}')
        return batch // self.n

    def _trainer(self, per_chip):
        config = self.config.copy_and_resolve_references()
        config.data.batch_size = config.data.eval_batch_size = per_chip * self.n
        validate_config(config, num_devices=self.n)
        # the schedule over COCO-sized epochs, as train.py sets it over its data
        steps_per_epoch = max(1, COCO_TRAIN_IMAGES // config.data.batch_size)
        total_steps = (config.train.max_steps if config.train.max_steps > 0
                       else config.train.epochs * steps_per_epoch)
        return build_trainer(config, self.mesh, steps_per_epoch, total_steps), config

    def _batch(self, step, per_chip, config):
        b = per_chip * self.n
        h, w = self.train_size if step == 'train' else self.eval_size
        spec = lambda shape, dtype: jax.ShapeDtypeStruct(  # noqa: E731
            shape, dtype, sharding=data_sharded(self.mesh))
        batch = {'images': spec((b, h, w, 3), jnp.uint8), 'pixel_mask': spec((b, h, w), jnp.bool_)}
        if step == 'eval':
            batch['orig_size'] = spec((b, 2), jnp.int32)
            batch['size'] = spec((b, 2), jnp.int32)
            return batch
        m = config.data.max_boxes
        batch.update(labels=spec((b, m), jnp.int32), boxes=spec((b, m, 4), jnp.float32),
                     valid=spec((b, m), jnp.bool_))
        if config.model.masks:
            batch['masks'] = spec((b, m, h, w), jnp.bool_)
        return batch

    def compile(self, step, per_chip):
        """The compiled step: the eval step's program, or the train step's
        three (`trainer.TrainStep.compile`) seen as one (`Programs`)."""
        trainer, config = self._trainer(per_chip)
        batch = self._batch(step, per_chip, config)
        if step == 'train':
            rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated(self.mesh))
            return Programs(trainer.train_step.compile(trainer.abstract_state, batch, rng))
        return trainer.eval_step.lower(trainer.abstract_state.eval_variables(), batch).compile()

    def compile_all(self, jobs):
        """[(step, per_chip)] -> [(compiled, or None when it does not fit in
        HBM, seconds)], compiled concurrently (the TPU compiler runs on one
        core per compilation). The compiler's out-of-memory message is kept
        in `self.out_of_memory[(step, per_chip)]`."""
        def compile_one(job):
            t0 = time.time()
            try:
                return self.compile(*job), time.time() - t0
            except Exception as e:  # XLA:TPU's out-of-memory is a compile error
                if 'RESOURCE_EXHAUSTED' in str(e) or 'Ran out of memory' in str(e):
                    self.out_of_memory[job] = _oom_summary(e)
                    return None, time.time() - t0
                raise
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        with persistent_cache_off(), concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(compile_one, jobs))

    def describe(self, step, per_chip, compiled, seconds):
        """The StepPlan of one compiled step."""
        if compiled is None:
            said = self.out_of_memory.get((step, per_chip), '')
            raise PlanError(f'the {step} step with {per_chip} images per chip does not fit in '
                            f'the {self.chip.hbm_bytes / 2**30:.0f} GiB of a {self.chip.generation} '
                            f'chip{" (the compiler: " + said + ")" if said else ""}: plan a '
                            'smaller --per_chip (or --config.model.remat=True)')
        mem = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops, nbytes = float(cost['flops']), float(cost['bytes accessed'])
        bound_s, bound, compute_s, memory_s = roofline(flops, nbytes, self.chip, self.per_device)
        images_per_s = per_chip * self.n / bound_s
        epochs = (self.config.train.epochs if self.config.train.max_steps <= 0 else
                  self.config.train.max_steps * per_chip * self.n / COCO_TRAIN_IMAGES)
        hlo = compiled.as_text()
        return StepPlan(
            step=step, topology=self.topology, chips=self.n,
            device_kind=self.devices[0].device_kind, per_chip_batch=per_chip,
            image_size=self.train_size if step == 'train' else self.eval_size,
            hbm_argument_bytes=mem.argument_size_in_bytes, hbm_temp_bytes=mem.temp_size_in_bytes,
            hbm_output_bytes=mem.output_size_in_bytes, hbm_alias_bytes=mem.alias_size_in_bytes,
            hbm_bytes_per_chip=_hbm_total(mem),
            hbm_capacity_bytes=self.chip.hbm_bytes // self.per_device,
            flops_per_chip=flops, bytes_accessed_per_chip=nbytes,
            bytes_accessed_per_image=nbytes / per_chip,
            step_time_lower_bound_s=bound_s, bound=bound, compute_time_s=compute_s,
            memory_time_s=memory_s, images_per_s_upper_bound=images_per_s,
            epoch_time_lower_bound_s=COCO_TRAIN_IMAGES / images_per_s,
            schedule_time_lower_bound_s=epochs * COCO_TRAIN_IMAGES / images_per_s,
            collectives=collectives(hlo), host_transfers=host_transfers(hlo), compile_s=seconds)

    def largest_batch(self, step, known, rounds=1, report=print):
        """(largest per-chip batch known to fit, smallest known not to fit
        or None), searched from a plan that fits (`known`) up to
        `MAX_PER_CHIP`. The HBM total is close to affine in the batch: each
        round extrapolates it from the closest fitting compilation (the
        state, the arguments, is batch-independent) to a guess g and
        compiles g and g + 1 side by side; one round usually ends it."""
        capacity = known.hbm_capacity_bytes
        lo, lo_total, hi = known.per_chip_batch, known.hbm_bytes_per_chip, None
        fixed = known.hbm_argument_bytes - known.hbm_alias_bytes
        slope = max((known.hbm_bytes_per_chip - fixed) / known.per_chip_batch, 1.0)
        bisect = False  # the last failure said nothing about the slope
        for _ in range(rounds):
            if lo >= MAX_PER_CHIP or (hi is not None and hi - lo <= 1):
                break
            guess = lo + max(1, int((capacity - lo_total) / slope))
            if bisect:
                guess = (lo + hi) // 2
            guess = min(guess, MAX_PER_CHIP, hi - 1 if hi else MAX_PER_CHIP)
            tries = [n for n in (guess, guess + 1) if n <= MAX_PER_CHIP and n != hi]
            report(f'  {step} step: do {" and ".join(map(str, tries))} images per chip fit?')
            compiled_round = self.compile_all([(step, n) for n in tries])
            for n, (compiled, _) in zip(tries, compiled_round):
                total = None if compiled is None else _hbm_total(compiled.memory_analysis())
                if total is not None and total <= capacity:
                    if n > lo:
                        slope = max((total - lo_total) / (n - lo), 1.0)
                        lo, lo_total = n, total
                else:
                    hi = n if hi is None else min(hi, n)
                    if total is not None and n > lo:
                        slope = max((total - lo_total) / (n - lo), 1.0)
            bisect = hi is not None and all(c is None for c, _ in compiled_round)
        return lo, hi


def _oom_summary(error):
    """The line of XLA:TPU's out-of-memory error that gives the sizes."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if re.search(r'\bUsed\b.*\bof\b|exceed|Ran out of memory', line):
            return line[:300]
    return lines[0][:300] if lines else 'out of memory'


def _hbm_total(m):
    """What a compiled step holds in HBM, from its `memory_analysis()`:
    arguments + outputs + temporaries, donated buffers counted once."""
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)


def _planned_config(config, report):
    if config.model.num_classes is None:  # the fine-tune config: from the data when training
        config = config.copy_and_resolve_references()
        config.model.num_classes = 91
        report('config.model.num_classes is taken from the data when training; planned with 91')
    return config


def plan_config(config, topology, per_chip=None, image_size=None, steps=('train', 'eval'),
                fit=True, fit_rounds=1, report=print):
    """Compile `config`'s steps for `topology` -> [StepPlan] (see the module
    docstring). `per_chip`: images per device (default: the config's batch
    over the devices); `image_size` (h, w): default, the largest train and
    eval buckets (what must fit). With `fit`, the train step's largest
    per-chip batch is searched (`search_largest_batch`)."""
    config = _planned_config(config, report)
    planner = Planner(config, topology, image_size)
    per_chip = per_chip or planner.default_per_chip()
    if per_chip < 1:
        raise PlanError(f'--per_chip={per_chip} must be >= 1')
    sizes = {'train': planner.train_size, 'eval': planner.eval_size}
    report(f'compiling the {" and ".join(steps)} steps for {topology} ({planner.n} devices, '
           f'{per_chip} images per chip, '
           + ', '.join(f'{s} {sizes[s][0]}x{sizes[s][1]}' for s in steps) + ')...')
    compiled = planner.compile_all([(step, per_chip) for step in steps])
    plans = [planner.describe(step, per_chip, c, sec) for step, (c, sec) in zip(steps, compiled)]
    for p in plans:
        if fit and p.step == 'train':
            search_largest_batch(config, topology, p, image_size, fit_rounds, report, planner)
    return plans


def search_largest_batch(config, topology, train_plan, image_size=None, rounds=1,
                         report=print, planner=None):
    """Fills `train_plan.largest_per_chip_batch` (and the smallest batch
    found not to fit) by `rounds` rounds of two compilations
    (`Planner.largest_batch`)."""
    planner = planner or Planner(_planned_config(config, lambda m: None), topology, image_size)
    train_plan.largest_per_chip_batch, train_plan.smallest_per_chip_batch_over = \
        planner.largest_batch('train', train_plan, rounds=rounds, report=report)
    return train_plan


def _gib(n):
    return f'{n / 2**30:.2f} GiB'


def _si(n):
    for unit, scale in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('k', 1e3)):
        if n >= scale:
            return f'{n / scale:.3g} {unit}'
    return f'{n:.3g} '


def _ms(seconds):
    return f'{seconds * 1e3:.1f} ms'


def format_plan(p, chip):
    h, w = p.image_size
    lines = [f'{p.step} step: {p.topology}, {p.chips} x {p.device_kind}, {p.per_chip_batch} '
             f'images of {h}x{w} per chip (compiled in {p.compile_s:.0f} s)',
             f'  HBM per chip: {_gib(p.hbm_bytes_per_chip)} of {_gib(p.hbm_capacity_bytes)} '
             f'(arguments {_gib(p.hbm_argument_bytes)}, temporaries {_gib(p.hbm_temp_bytes)}, '
             f'outputs {_gib(p.hbm_output_bytes)}, donated {_gib(p.hbm_alias_bytes)})'
             + ('' if p.fits else '  DOES NOT FIT'),
             f'  per chip and step: {_si(p.flops_per_chip)}FLOP, '
             f'{_si(p.bytes_accessed_per_chip)}B accessed '
             f'({_si(p.bytes_accessed_per_image)}B per image)',
             f'  roofline ({chip.generation}: {chip.bf16_flops_per_s / 1e12:.0f} TFLOP/s, '
             f'{chip.hbm_bytes_per_s / 1e9:.0f} GB/s per chip): step >= '
             f'{_ms(p.step_time_lower_bound_s)}, {p.bound}-bound (arithmetic '
             f'{_ms(p.compute_time_s)}, memory {_ms(p.memory_time_s)}); '
             f'<= {p.images_per_s_upper_bound:.0f} images/s',
             f'  one COCO epoch ({COCO_TRAIN_IMAGES} images) >= '
             f'{duration(p.epoch_time_lower_bound_s)}'
             + (f'; the schedule >= {duration(p.schedule_time_lower_bound_s)}'
                if p.step == 'train' else '')]
    if p.collectives:
        lines.append('  collectives: ' + ', '.join(
            f'{k} x{n} ({v / 2**20:.1f} MiB)' for k, (n, v) in sorted(p.collectives.items())))
    else:
        lines.append('  collectives: none')
    if p.host_transfers:
        lines.append('  host transfers per chip and step (host callbacks): ' + ', '.join(
            f'{t["direction"]} {t["shape"]}' for t in p.host_transfers))
    if p.largest_per_chip_batch is not None:
        lines.append(_fit_line(p))
    return '\n'.join(lines)


def _fit_line(p):
    lo, over = p.largest_per_chip_batch, p.smallest_per_chip_batch_over
    if over is not None and over == lo + 1:
        found = f'({over} does not)'
    elif over is not None:
        found = f'({over} does not; between them untried: --fit_rounds=2 narrows it)'
    elif lo >= MAX_PER_CHIP:
        found = f'(searched up to {MAX_PER_CHIP})'
    else:
        found = '(larger batches untried: --fit_rounds=2 goes on)'
    return f'  {p.step} step, largest batch that fits: {lo} per chip {found}'


def as_json(p):
    d = dataclasses.asdict(p)
    d['image_size'] = list(p.image_size)
    d['collectives'] = {k: {'count': n, 'bytes': b} for k, (n, b) in p.collectives.items()}
    d['fits'] = p.fits
    return d


def main(argv):
    from absl import flags
    from ml_collections import config_flags  # noqa: F401  (flags defined in cli())
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise PlanError(f'unexpected arguments: {argv[1:]}')
    size = None
    if FLAGS.image_size:
        m = re.fullmatch(r'(\d+)x(\d+)', FLAGS.image_size)
        if not m:
            raise PlanError(f'--image_size={FLAGS.image_size!r} must be HxW, e.g. 800x1088')
        size = (int(m.group(1)), int(m.group(2)))
    report = (lambda s: print(s, file=sys.stderr, flush=True)) if FLAGS.json else \
        (lambda s: print(s, flush=True))
    unknown = set(FLAGS.steps) - {'train', 'eval'}
    if unknown or not FLAGS.steps:
        raise PlanError(f'--steps={",".join(FLAGS.steps)}: a comma list of train and eval')
    plans = plan_config(FLAGS.config, FLAGS.topology, FLAGS.per_chip or None, size,
                        steps=tuple(FLAGS.steps), fit=False, report=report)
    chip = chip_of(FLAGS.topology)
    if not FLAGS.json:  # the plan first; the batch search takes another round of compilations
        for p in plans:
            print(format_plan(p, chip), flush=True)
    train = [p for p in plans if p.step == 'train']
    if train and not FLAGS.no_fit:
        report('searching the largest train batch that fits (two more compilations a round; '
               '--no_fit skips it)...')
        search_largest_batch(FLAGS.config, FLAGS.topology, train[0], size, FLAGS.fit_rounds,
                             report)
        if not FLAGS.json:
            print(_fit_line(train[0]), flush=True)
    if FLAGS.json:
        for p in plans:
            print(json.dumps(as_json(p)), flush=True)


def cli(argv):
    """`detr-jax plan ...` / `python -m detr_jax.plan ...`."""
    from absl import app, flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=False)
    flags.DEFINE_string('topology', None, f'A TPU topology, e.g. {", ".join(TOPOLOGY_EXAMPLES)}.')
    flags.DEFINE_integer('per_chip', 0, 'Images per chip (default: the config\'s batch over '
                         'the chips).')
    flags.DEFINE_string('image_size', '', 'HxW (default: the largest train / eval bucket).')
    flags.DEFINE_bool('no_fit', False, 'Skip the search for the largest train batch that fits.')
    flags.DEFINE_integer('fit_rounds', 1, 'Rounds of the search (two compilations each).')
    flags.DEFINE_list('steps', ['train', 'eval'], 'Which steps to compile: train, eval.')
    flags.DEFINE_bool('json', False, 'One JSON object per compiled step on standard output.')
    flags.mark_flags_as_required(['config', 'topology'])

    def run(args):
        set_verbosity(flags.FLAGS.verbosity)
        try:
            main(args)
        except PlanError as e:
            print(f'detr-jax plan: {e}', file=sys.stderr)
            sys.exit(2)
    app.run(run, argv=['detr-jax plan'] + list(argv))
    return 0


if __name__ == '__main__':
    sys.exit(cli(sys.argv[1:]))
