"""Our own checkpoint folders: converted weights (`detr-jax convert`) and
training workdirs, read back as (model_config, variables)."""
import json
import os

import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = 'detr_jax_config.json'


def save_converted(out_dir, model_config, variables):
    """variables as an orbax checkpoint + the model config (label_map in it)."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(out_dir, 'variables'), variables, force=True)
        ckptr.wait_until_finished()
    with open(os.path.join(out_dir, CONFIG_FILE), 'w') as f:
        f.write(model_config.to_json_best_effort(indent=1))


def is_converted(path):
    return os.path.isdir(path) and os.path.exists(os.path.join(path, CONFIG_FILE))


def is_workdir(path):
    return os.path.isdir(os.path.join(path, 'checkpoints'))


def load_converted(path):
    from detr_jax.models import abstract_variables, build_model
    with open(os.path.join(path, CONFIG_FILE)) as f:
        cfg = ml_collections.ConfigDict(json.load(f))
    abstract = abstract_variables(build_model(cfg))
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(os.path.join(os.path.abspath(path), 'variables'), abstract)
    return cfg, variables


def load_workdir(workdir, step=None, ema=True):
    """The latest (or given) training checkpoint of a workdir ->
    (full config, model variables, step). The variables hold the EMA weights
    if training kept them (config.train.ema_decay > 0), unless `ema=False`."""
    mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                                 item_names=('state', 'meta'))
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f'{workdir}: no checkpoint in {workdir}/checkpoints')
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
    config = ml_collections.ConfigDict(meta['config'])
    params = state['params']
    if ema and state.get('ema_params'):
        params = state['ema_params']
    variables = {'params': params, 'batch_stats': state.get('batch_stats', {})}
    if not variables['batch_stats']:
        variables.pop('batch_stats')
    config.model.label_map = meta.get('label_map', {})
    return config, variables, step
