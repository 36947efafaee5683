"""One process of `benchmarks/run.py --only processes`: the demo config's
train step on a fixed batch, timed; prints one JSON line.

  python benchmarks/processes_worker.py DATA_DIR STEPS SOLVER REDUCTION [COORDINATOR NUM_PROCESSES PROCESS_ID]

REDUCTION: config.train.gradient_all_reduce ('auto', 'per_parameter', 'one_array').
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'configs'))


def main(data_dir, steps, solver, reduction, coordinator=None, num_processes=1, process_id=0):
    import jax
    if coordinator:
        jax.distributed.initialize(coordinator_address=coordinator,
                                   num_processes=int(num_processes), process_id=int(process_id))
    import demo
    from detr_jax import plan
    from detr_jax.data.datasets import build_source
    from detr_jax.data.pipeline import TRAIN_STEP_KEYS, InputPipeline, split_batch
    from detr_jax.sharding import make_mesh, to_global
    from detr_jax.trainer import build_trainer
    c = demo.get_config()
    c.data.num_train, c.data.cache_dir = 64, data_dir
    c.matcher.solver = solver
    c.train.gradient_all_reduce = reduction
    pipeline = InputPipeline(build_source(c.data, 'train'), c.data, jax.process_index(),
                             jax.process_count())
    rows = split_batch(next(iter(pipeline)), TRAIN_STEP_KEYS)[0]
    trainer = build_trainer(c, make_mesh(), steps_per_epoch=250)
    state = trainer.init_state(jax.random.PRNGKey(0))
    batch = to_global(rows, trainer.mesh)
    rng = jax.random.PRNGKey(1)
    hlo = '\n'.join(c.as_text() for c in trainer.train_step.compile(state, batch, rng).values())
    for _ in range(3):
        state, m = trainer.train_step(state, batch, rng)
    m['loss'].block_until_ready()
    t = time.perf_counter()
    for _ in range(int(steps)):
        state, m = trainer.train_step(state, batch, rng)
    m['loss'].block_until_ready()
    dt = time.perf_counter() - t
    # the gradient reduction alone: as many floats as the model has
    # parameters, one row per device, summed over the devices
    import numpy as np
    from detr_jax.sharding import replicated
    n = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    local = np.ones((jax.local_device_count(), n), np.float32)
    grads = to_global({'g': local}, trainer.mesh)['g']
    reduce = jax.jit(lambda g: g.sum(0), out_shardings=replicated(trainer.mesh))
    reduce(grads).block_until_ready()
    t = time.perf_counter()
    for _ in range(10):
        out = reduce(grads)
    out.block_until_ready()
    reduce_s = (time.perf_counter() - t) / 10
    # the same floats as the model's arrays (one all-reduce operand each)
    leaves = jax.tree_util.tree_leaves(state.params)
    tree = to_global({str(i): np.ones((jax.local_device_count(),) + x.shape, np.float32)
                      for i, x in enumerate(leaves)}, trainer.mesh)
    reduce_tree = jax.jit(lambda t: jax.tree_util.tree_map(lambda g: g.sum(0), t),
                          out_shardings=replicated(trainer.mesh))
    jax.block_until_ready(reduce_tree(tree))
    t = time.perf_counter()
    for _ in range(10):
        out = reduce_tree(tree)
    jax.block_until_ready(out)
    reduce_tree_s = (time.perf_counter() - t) / 10
    tree_collectives = plan.collectives(reduce_tree.lower(tree).compile().as_text())
    print(json.dumps({'steps_per_s': int(steps) / dt, 'process': jax.process_index(),
                      'params': int(n), 'arrays': len(leaves), 'reduce_ms': reduce_s * 1e3,
                      'reduce_arrays_ms': reduce_tree_s * 1e3,
                      'reduce_arrays_collectives': {k: v[0] for k, v in tree_collectives.items()},
                      'devices': jax.device_count(),
                      'gradient_all_reduce': trainer.gradient_all_reduce,
                      'collectives': {k: v[0] for k, v in plan.collectives(hlo).items()},
                      'host_transfers': len(plan.host_transfers(hlo))}), flush=True)


if __name__ == '__main__':
    main(*sys.argv[1:])
