"""`detr-jax plan`: the real TPU compiler (libtpu, no TPU) on the tiny config.

Compilations for a TPU take ~10-60 s each on 2 cores, so the tests share
them: one CLI run (train and eval on v5e:2x2) and two batch sizes on a
multi-host topology.
"""
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import pytest

import tiny_config
from detr_jax import plan
from detr_jax.sharding import data_sharded, make_mesh, replicated

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / 'tests' / 'tiny_config.py')
V5E = plan.chip_of('v5e:2x2')


@pytest.fixture(scope='module')
def cli_plans(tmp_path_factory):
    """One `python -m detr_jax.plan --json` run: {step: its JSON object,
    'jit_cache': the persistent compilation cache it was given (empty)}."""
    cache = tmp_path_factory.mktemp('jit_cache')
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
    out = subprocess.run(
        [sys.executable, '-m', 'detr_jax.plan', f'--config={TINY}', '--topology=v5e:2x2',
         '--no_fit', '--json'], capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    objects = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
    assert len(objects) == 2, out.stdout
    return {**{o['step']: o for o in objects}, 'jit_cache': cache}


def test_tpu_programs_stay_out_of_the_persistent_compilation_cache(cli_plans):
    """A TPU program compiled without a TPU cannot be loaded back (JAX warns
    'PjRtCompiler must be constructed with a Client'): the plan writes none."""
    assert sorted(p.name for p in cli_plans['jit_cache'].iterdir()) == []


def test_roofline_of_a_matmul_by_hand():
    """A [1024, 2048] x [2048, 512] bf16 matmul, rows split over 4 v5e chips:
    per chip 2 * 256 * 2048 * 512 = 536,870,912 FLOP (the compiler's count
    too); with 3,407,872 bytes (256x2048 + 2048x512 + 256x512 bf16) it takes
    at least 536870912 / 197e12 = 2.7252e-6 s of arithmetic and
    3407872 / 819e9 = 4.1610e-6 s of HBM traffic: memory-bound."""
    seconds, bound, compute, memory = plan.roofline(536870912, 3407872, V5E)
    assert compute == pytest.approx(2.72523e-6, rel=1e-5)
    assert memory == pytest.approx(4.16101e-6, rel=1e-5)
    assert (seconds, bound) == (memory, 'memory')
    # a v4 device is one of the chip's two TensorCores: half its rate
    v4 = plan.chip_of('v4:2x2x1')
    s4, b4, c4, _ = plan.roofline(536870912, 3407872, v4, devices_per_chip=2)
    assert c4 == pytest.approx(536870912 / 137.5e12)
    assert s4 == pytest.approx(3407872 / 600e9) and b4 == 'memory'

    mesh = make_mesh(plan.topology_devices('v5e:2x2'))
    a = jax.ShapeDtypeStruct((1024, 2048), jnp.bfloat16, sharding=data_sharded(mesh))
    b = jax.ShapeDtypeStruct((2048, 512), jnp.bfloat16, sharding=replicated(mesh))
    with plan.persistent_cache_off():
        cost = jax.jit(lambda x, y: x @ y).lower(a, b).compile().cost_analysis()
    assert cost['flops'] == 536870912


def test_cli_plans_tiny_train_and_eval_for_v5e(cli_plans):
    train, ev = cli_plans['train'], cli_plans['eval']
    for p in (train, ev):
        assert p['topology'] == 'v5e:2x2' and p['chips'] == 4
        assert p['device_kind'] == 'TPU v5 lite'
        assert p['per_chip_batch'] == 2  # the config's batch of 8 over 4 chips
        assert p['hbm_capacity_bytes'] == 16 * 2**30
        assert 0 < p['hbm_bytes_per_chip'] < p['hbm_capacity_bytes'] and p['fits']
        assert p['hbm_bytes_per_chip'] == (p['hbm_argument_bytes'] + p['hbm_output_bytes']
                                           + p['hbm_temp_bytes'] - p['hbm_alias_bytes'])
        assert p['flops_per_chip'] > 0 and p['bytes_accessed_per_chip'] > 0
        expected = max(p['flops_per_chip'] / V5E.bf16_flops_per_s,
                       p['bytes_accessed_per_chip'] / V5E.hbm_bytes_per_s)
        assert p['step_time_lower_bound_s'] == pytest.approx(expected)
        assert p['images_per_s_upper_bound'] == pytest.approx(8 / expected)
        assert p['epoch_time_lower_bound_s'] == pytest.approx(118287 * expected / 8)
    # the train step (forward and backward; stem and layer1 frozen) does more
    # than the eval step and updates the state in place (donated), with the
    # gradients' all-reduce; evaluation needs none
    assert train['flops_per_chip'] > 1.5 * ev['flops_per_chip']
    assert train['hbm_alias_bytes'] > 0 and ev['hbm_alias_bytes'] == 0
    assert ev['collectives'] == {}
    # what a TPU run wants: the TPU compiler combines the gradients of every
    # parameter array into one all-reduce (beside two of scalars: the loss's
    # normalizers), and nothing is gathered (the matching costs stay on
    # their chips, below)
    assert set(train['collectives']) == {'all-reduce'}, train['collectives']
    assert train['collectives']['all-reduce']['count'] <= 3, train['collectives']
    assert train['collectives']['all-reduce']['bytes'] >= 0.5 * _param_bytes()
    # the schedule: the tiny config stops after 6 steps
    assert train['schedule_time_lower_bound_s'] == pytest.approx(
        6 * train['step_time_lower_bound_s'])
    # the scipy matcher: each chip sends its own shard (L=2 layers, 8/4 = 2
    # images, 12 queries, 8 target slots) to its host; nothing is gathered
    sent = [t for t in train['host_transfers'] if t['direction'] == 'to host']
    assert {'direction': 'to host', 'shape': 'f32[2,2,12,8]', 'bytes': 4 * 2 * 2 * 12 * 8} in sent
    assert [t['shape'] for t in train['host_transfers'] if t['direction'] == 'from host'] == \
        ['s32[2,2,8]']
    assert ev['host_transfers'] == []


def _param_bytes():
    """f32 bytes of the tiny config's parameters."""
    from detr_jax.models import build_model
    c = tiny_config.get_config()
    shapes = jax.eval_shape(lambda: build_model(c.model).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 96, 96, 3)), jnp.ones((1, 96, 96), bool)))
    return sum(4 * x.size for x in jax.tree_util.tree_leaves(shapes['params']))


def test_multi_host_topology_and_hbm_growing_with_the_batch():
    """v5e:4x4 is 16 chips on 4 hosts; more images per chip need more HBM
    and more bytes."""
    devices = plan.topology_devices('v5e:4x4')
    assert len(devices) == 16 and len({d.process_index for d in devices}) == 4
    one, = plan.plan_config(tiny_config.get_config(), 'v5e:4x4', per_chip=1, steps=('train',), fit=False,
                            report=lambda s: None)
    three, = plan.plan_config(tiny_config.get_config(), 'v5e:4x4', per_chip=3, steps=('train',), fit=False,
                              report=lambda s: None)
    assert one.chips == three.chips == 16
    assert three.hbm_temp_bytes > one.hbm_temp_bytes
    assert three.hbm_bytes_per_chip > one.hbm_bytes_per_chip
    # the update program, which needs most, takes the forward's activations
    # as arguments (`plan.Programs`)
    assert three.hbm_argument_bytes > one.hbm_argument_bytes
    assert three.bytes_accessed_per_chip > one.bytes_accessed_per_chip
    assert 'all-reduce' in three.collectives


def test_largest_batch_search_converges_on_the_capacity():
    """The search over compilations, with a fake compiler whose HBM total is
    affine in the batch (100 MB of state + 700 MB per image) on a 16 GiB
    (17.18e9 bytes) chip: 24 images take 16.9e9 bytes and fit, 25 take
    17.6e9 and do not."""
    compiled_batches = []

    def fake_compile(step, per_chip):
        compiled_batches.append(per_chip)
        total = int(100e6 + 700e6 * per_chip)
        if total > 16 * 2**30:
            return None  # XLA:TPU's out-of-memory compile error
        mem = types.SimpleNamespace(argument_size_in_bytes=int(100e6), output_size_in_bytes=0,
                                    alias_size_in_bytes=0, temp_size_in_bytes=total - int(100e6))
        return types.SimpleNamespace(memory_analysis=lambda: mem)

    planner = plan.Planner.__new__(plan.Planner)
    planner.compile_all = lambda jobs: [(fake_compile(*job), 1.0) for job in jobs]
    known = types.SimpleNamespace(per_chip_batch=4, hbm_capacity_bytes=16 * 2**30,
                                  hbm_argument_bytes=int(100e6), hbm_alias_bytes=0,
                                  hbm_bytes_per_chip=int(100e6 + 700e6 * 4))
    lo, hi = planner.largest_batch('train', known, rounds=1, report=lambda s: None)
    assert (lo, hi) == (24, 25)
    assert compiled_batches == [24, 25]
    # a poor first guess (HBM rising faster than the first point says) takes
    # more rounds: here the state is said to be 2.8 GB, so 1 image looks
    # like 0 bytes per image and the first guess is the cap
    compiled_batches.clear()
    known.hbm_argument_bytes = known.hbm_bytes_per_chip - 1
    lo, hi = planner.largest_batch('train', known, rounds=4, report=lambda s: None)
    assert (lo, hi) == (24, 25)
    # what `detr-jax plan` prints after the plan
    known.step, known.hbm_argument_bytes = 'train', int(100e6)
    plan.search_largest_batch(None, 'v5e:2x2', known, rounds=1, report=lambda s: None,
                              planner=planner)
    assert (known.largest_per_chip_batch, known.smallest_per_chip_batch_over) == (24, 25)
    assert plan._fit_line(known) == '  train step, largest batch that fits: 24 per chip (25 does not)'


def test_clear_errors(monkeypatch):
    with pytest.raises(plan.PlanError, match=r"unknown TPU generation.*'v9x:2x2'.*v5e:2x2"):
        plan.topology_devices('v9x:2x2')
    with pytest.raises(plan.PlanError, match=r"does not know the topology 'v5e:banana'.*v5e:4x4"):
        plan.topology_devices('v5e:banana')
    config = tiny_config.get_config()
    config.data.batch_size = 6
    with pytest.raises(plan.PlanError, match=r'batch_size=6 does not divide over the 4 devices'):
        plan.plan_config(config, 'v5e:2x2', report=lambda s: None)
    plan.topology_devices.cache_clear()
    monkeypatch.setattr('importlib.util.find_spec', lambda name: None)
    with pytest.raises(plan.PlanError, match=r"needs libtpu.*pip install -e '\.\[tpu-plan\]'"):
        plan.topology_devices('v5e:2x2')


def test_every_chip_figure_has_a_source():
    for chip in plan.CHIPS:
        assert chip.source.startswith('https://cloud.google.com/tpu/docs/')
        assert chip.hbm_bytes > 0 and chip.bf16_flops_per_s > 1e14 and chip.hbm_bytes_per_s > 5e11


def test_detr_jax_plan_command_reports_a_bad_topology_by_name():
    out = subprocess.run([sys.executable, '-m', 'detr_jax.cli', 'plan', f'--config={TINY}',
                          '--topology=v7x:2x2'], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 2
    assert "detr-jax plan: unknown TPU generation in topology 'v7x:2x2'" in out.stderr
    assert 'Traceback' not in out.stderr


def test_a_step_that_does_not_fit_says_what_the_compiler_said():
    """64 tiny images of 2048x2048 per chip need ~34 GB of temporaries."""
    out = subprocess.run([sys.executable, '-m', 'detr_jax.plan', f'--config={TINY}',
                          '--topology=v5e:2x2', '--steps=train', '--no_fit', '--per_chip=64',
                          '--image_size=2048x2048'], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    assert ('the train step with 64 images per chip does not fit in the 16 GiB of a v5e chip '
            '(the compiler: RESOURCE_EXHAUSTED: Ran out of memory') in out.stderr
    assert 'plan a smaller --per_chip' in out.stderr and 'Traceback' not in out.stderr


def test_1x1_convolutions_compile_to_fewer_bytes_as_matmuls(monkeypatch):
    """R50's bottleneck block (layer3's channels at 25x34, 2 images, bf16,
    frozen batch norm), forward and backward on one v5e chip: with its 1x1
    convolutions computed as matmuls (`layers._PointwiseConv`) the TPU
    compiler counts far fewer bytes than with them as convolutions (0.64x
    here; 0.56x over R50's blocks at 800x1088, 0.83x over the whole step;
    benchmarks/README.md, "Where the bytes go")."""
    import flax.linen as nn
    from jax.sharding import SingleDeviceSharding

    from detr_jax.models import layers
    from detr_jax.models.backbone import _Block

    def as_convolution(features, stride, name, **kw):  # TorchConv's 1x1 case before
        return nn.Conv(features, (1, 1), (stride,) * 2, padding='VALID', name=name, **kw)

    block = _Block(256, bottleneck=True, norm='frozen_bn', dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, 25, 34, 1024), jnp.bfloat16)
    variables = jax.eval_shape(block.init, jax.random.PRNGKey(0), x)
    chip = SingleDeviceSharding(plan.topology_devices('v5e:2x2')[0])
    on_chip = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=chip)  # noqa: E731

    def bytes_accessed():
        def loss(params, batch_stats, x):
            out = block.apply({'params': params, 'batch_stats': batch_stats}, x)
            return jnp.sum(out.astype(jnp.float32) ** 2)
        step = jax.jit(jax.grad(loss, argnums=(0, 2)))
        args = jax.tree.map(on_chip, (variables['params'], variables['batch_stats'], x))
        with plan.persistent_cache_off():
            return step.lower(*args).compile().cost_analysis()['bytes accessed']

    as_matmuls = bytes_accessed()
    monkeypatch.setattr(layers, '_PointwiseConv', as_convolution)
    as_convolutions = bytes_accessed()
    assert as_matmuls < 0.75 * as_convolutions, (as_matmuls, as_convolutions)
