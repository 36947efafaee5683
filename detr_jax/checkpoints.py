"""Checkpoint I/O: training checkpoints (orbax, state + data position +
config + label map) written, resumed and read back; converted weights
(`detr-jax convert`); a pretrained start for fine-tuning."""
import json
import logging

import flax
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from detr_jax.models.boosters import TRAINING_ONLY, strip_training_only
from detr_jax.paths import as_path, read_json

CONFIG_FILE = 'detr_jax_config.json'


def save_converted(out_dir, model_config, variables):
    """variables as an orbax checkpoint + the model config (label_map in it),
    in the folder `out_dir` (local or a bucket)."""
    out_dir = as_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out_dir / 'variables', variables, force=True)
        ckptr.wait_until_finished()
    (out_dir / CONFIG_FILE).write_text(model_config.to_json_best_effort(indent=1))


def is_converted(path):
    return (as_path(path) / CONFIG_FILE).exists()


def is_workdir(path):
    return (as_path(path) / 'checkpoints').is_dir()


def load_converted(path):
    from detr_jax.models import abstract_variables, build_model
    path = as_path(path)
    cfg = ml_collections.ConfigDict(read_json(path / CONFIG_FILE))
    abstract = abstract_variables(build_model(cfg))
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(path / 'variables', abstract)
    return cfg, variables


def _tuples(tree):
    """A config read back from JSON with its sequences as tuples again (the
    configs' own type: bucket shapes are dict keys)."""
    if isinstance(tree, dict):
        return {k: _tuples(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return tuple(_tuples(v) for v in tree)
    return tree


def _replicated_template(mngr, step):
    """The stored state's shapes and dtypes, replicated over every device."""
    from detr_jax.sharding import make_mesh, replicated
    sharding = replicated(make_mesh())
    tree = dict(mngr.item_metadata(step)['state'])
    return jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree,
        is_leaf=lambda x: hasattr(x, 'shape') and hasattr(x, 'dtype'))


def load_workdir(workdir, step=None, ema=True):
    """The latest (or given) training checkpoint of a workdir ->
    (full config, model variables, step). The variables hold the EMA weights
    if training kept them (config.train.ema_decay > 0), unless `ema=False`.

    Any number of processes and devices reads a checkpoint written by any
    other number: the arrays are restored replicated over this run's devices
    (orbax's own default, the writers' shardings, refuses another topology)."""
    mngr = ocp.CheckpointManager(as_path(workdir) / 'checkpoints', item_names=('state', 'meta'),
                                 item_handlers={'state': ocp.StandardCheckpointHandler(),
                                                'meta': ocp.JsonCheckpointHandler()})
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f'{workdir}: no checkpoint in {workdir}/checkpoints')
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    state = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_replicated_template(mngr, step))))['state']
    config = ml_collections.ConfigDict(_tuples(meta['config']))
    params = state['params']
    if ema and state.get('ema_params'):
        params = state['ema_params']
    variables = {'params': params, 'batch_stats': state.get('batch_stats', {})}
    if not variables['batch_stats']:
        variables.pop('batch_stats')
    config.model.label_map = meta.get('label_map', {})
    return config, variables, step


def manager(workdir, config):
    """The orbax CheckpointManager of a training workdir (asynchronous saves,
    the newest `config.train.keep_checkpoints` kept)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints,
                                           enable_async_checkpointing=True, create=True)
    return ocp.CheckpointManager(as_path(workdir) / 'checkpoints', options=options,
                                 item_names=('state', 'meta'))


def save(mngr, step, state, position, config, label_map):
    """The state, with the data position {'epoch', 'batch'} of the next batch,
    the run's full config and the label map (class index -> category)."""
    meta = {'position': position, 'config': json.loads(config.to_json_best_effort()),
            'label_map': {str(k): v for k, v in label_map.items()}}
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)))


def restore_latest(mngr, abstract_state):
    """(step, state, meta) of the latest checkpoint, or Nones.

    A checkpoint written with `train.ema_decay` off resumes with it on (the
    EMA starts from the restored weights), and the other way round (the EMA
    is dropped): whether the checkpoint holds an EMA is read from the config
    stored with it."""
    step = mngr.latest_step()
    if step is None:
        return None, None, None
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    has_ema = meta['config']['train']['ema_decay'] > 0
    wants_ema = bool(abstract_state.ema_params)
    template = abstract_state.replace(ema_params=abstract_state.params if has_ema else {})
    state = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template)))['state']
    if wants_ema and not has_ema:
        state = state.replace(ema_params=jax.tree_util.tree_map(jnp.copy, state.params))
        logging.warning('checkpoint %d has no EMA of the weights: train.ema_decay starts one '
                        'from its weights', step)
    elif has_ema and not wants_ema:
        state = state.replace(ema_params={})
        logging.warning('checkpoint %d has an EMA of the weights; train.ema_decay is 0, so it '
                        'is dropped', step)
    return step, state, meta


def init_from_pretrained(state, path, reinit_class_head=False):
    """`state` with the weights at `path`: a training workdir (its latest
    checkpoint, EMA weights when it kept them), a converted checkpoint or an
    official / Hugging Face one (`convert.load_checkpoint`).

    A detection checkpoint starts a panoptic model's detector (nested under
    `detr`, as the original's DETRsegm) with a fresh mask head; a panoptic
    one starts a detection model from its detector. With
    `reinit_class_head`, a class head of another class count keeps the
    state's fresh one (logged). The training-only boosters' parameters
    (`models.boosters`) start fresh when the checkpoint has none, and are
    dropped when the state has none."""
    if is_workdir(path):
        _, variables, step = load_workdir(path)
        logging.info('weights from step %d of %s', step, path)
    else:
        from detr_jax.convert import load_checkpoint
        _, variables = load_checkpoint(path)
    params = flax.core.unfreeze(variables['params'])
    stats = flax.core.unfreeze(variables.get('batch_stats', {}))
    ours = flax.core.unfreeze(state.params)
    ours_stats = flax.core.unfreeze(state.batch_stats)
    if 'detr' in ours and 'detr' not in params:  # detection -> panoptic: a fresh mask head
        params = dict(ours, detr=params)
        stats = dict(ours_stats, detr=stats) if stats else ours_stats
        logging.info('%s: a detector without a mask head; the mask head starts fresh', path)
    elif 'detr' in params and 'detr' not in ours:  # panoptic -> detection: its detector
        params, stats = params['detr'], stats.get('detr', {})
    # the detector's parameters: nested under `detr` in a panoptic model
    nested = 'detr' in ours
    theirs_det, ours_det = (params['detr'], ours['detr']) if nested else (params, ours)
    if TRAINING_ONLY in ours_det and TRAINING_ONLY not in theirs_det:
        theirs_det = dict(theirs_det, **{TRAINING_ONLY: ours_det[TRAINING_ONLY]})
        logging.info('%s: no training-only queries (Group DETR / denoising); they start fresh',
                     path)
    elif TRAINING_ONLY in theirs_det and TRAINING_ONLY not in ours_det:
        theirs_det = strip_training_only(theirs_det)
    params = dict(params, detr=theirs_det) if nested else theirs_det
    head = ('detr', 'class_embed') if nested else ('class_embed',)

    def get(tree, keys):
        for k in keys:
            tree = tree[k]
        return tree
    theirs_head = get(params, head)['dense']['kernel'].shape
    ours_head = get(ours, head)['dense']['kernel'].shape
    if theirs_head != ours_head:
        if not reinit_class_head:
            raise ValueError(f'{path}: class head {theirs_head} != model {ours_head}; set '
                             'config.train.reinit_class_head=True to start a new head for this '
                             'dataset')
        get(params, head[:-1])[head[-1]] = get(ours, head)
        logging.info('re-initialized the class head: %s -> %s', theirs_head, ours_head)
    try:
        new_params = jax.tree_util.tree_map(lambda a, b: jnp.asarray(b, a.dtype),
                                            state.params, params)
        new_stats = jax.tree_util.tree_map(lambda a, b: jnp.asarray(b, a.dtype),
                                           state.batch_stats, stats)
    except ValueError as e:  # another architecture
        raise ValueError(f'{path}: its weights do not fit this model (config.model): {e}') \
            from None
    ema = jax.tree_util.tree_map(jnp.copy, new_params) if state.ema_params else {}
    return state.replace(params=new_params, batch_stats=new_stats, ema_params=ema)
