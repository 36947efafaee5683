"""AP against minutes of the demo config with the training-only boosters
(Group DETR, denoising queries) on DETR's decoder and the conditional one.

  python benchmarks/boosters.py [--variants detr,detr+dn,...] [--out DIR]
                                [--steps detr=12000,...] [--table-only]

Each variant trains `configs/demo.py` from a fresh workdir under DIR in a
process of its own (`python -m detr_jax.main`), one after the other on an
otherwise idle machine, with the same seeds, as on a fresh machine (its own
synthetic set and compilation cache); its minutes are wall time from the
process's start to each evaluation's metrics file (data generation and
compilation included). The lr drops at ~90% of the variant's steps, which
are sized so that its run ends near the 15-minute budget
(`--steps name=N`). Writes DIR/boosters.json, prints a markdown table and
draws AP against minutes (DIR/boosters.png).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lr(lr):
    """The same lr for the transformer and the backbone (the demo trains both)."""
    return {'optim.lr': lr, 'optim.lr_backbone': lr}


# name -> config overrides on top of configs/demo.py (each variant names its
# decoder, groups and lr: the demo's own defaults changed on 12-04)
_DETR = {'model.conditional': False, 'model.num_groups': 1, **_lr(3e-4)}
_COND = {'model.conditional': True, 'model.num_groups': 1, **_lr(5e-4)}
_DN = {'model.dn_groups': 5}
_GROUP = {'model.num_groups': 4}
VARIANTS = {
    'detr': _DETR,
    'detr+dn': {**_DETR, **_DN},
    'detr+group': {**_DETR, **_GROUP},
    'detr+dn+group': {**_DETR, **_DN, **_GROUP},
    'detr+group11': {**_DETR, 'model.num_groups': 11},  # the paper's group count
    # the groups leave the "mean box" plateau sooner: the conditional decoder's lr
    'detr+group+lr5e-4': {**_DETR, **_GROUP, **_lr(5e-4)},
    # the demo's defaults since 12-04 (with --steps detr+group+lr7e-4=12500)
    'detr+group+lr7e-4': {**_DETR, **_GROUP, **_lr(7e-4)},
    'cond': _COND,
    'cond+dn': {**_COND, **_DN},
    'cond+group': {**_COND, **_GROUP},
    'cond+dn+group': {**_COND, **_DN, **_GROUP},
    'cond+group+lr7e-4': {**_COND, **_GROUP, **_lr(7e-4)},
    'cond+dn+group+lr7e-4': {**_COND, **_DN, **_GROUP, **_lr(7e-4)},
}
STEPS_PER_EPOCH = 249  # the demo's 2000 images in batches of 8 (bucketed)


def run_variant(name, steps, out, eval_every):
    workdir = os.path.join(out, name)
    if os.path.exists(workdir):  # a fresh run: an earlier one's checkpoints would be resumed
        print(f'removing the earlier run {workdir}', flush=True)
        shutil.rmtree(workdir)
    overrides = dict(VARIANTS[name])
    overrides.update({'train.max_steps': steps, 'train.eval_every': eval_every,
                      'optim.lr_drop_epochs': max(1, round(0.9 * steps / STEPS_PER_EPOCH)),
                      # as on a fresh machine: the synthetic set made, the steps compiled
                      'data.cache_dir': os.path.join(workdir, 'synthetic')})
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(workdir, 'jit_cache'))
    cmd = [sys.executable, '-m', 'detr_jax.main', '--config=configs/demo.py',
           f'--workdir={workdir}'] + [f'--config.{k}={v}' for k, v in overrides.items()]
    print('$', ' '.join(cmd), flush=True)
    start = time.time()
    with open(os.path.join(out, f'{name}.log'), 'w') as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True, env=env)
    points = []
    eval_dir = os.path.join(workdir, 'eval')
    for f in sorted(os.listdir(eval_dir)):
        if f.startswith('metrics_') and f.endswith('.json'):
            m = json.load(open(os.path.join(eval_dir, f)))
            minutes = (os.path.getmtime(os.path.join(eval_dir, f)) - start) / 60
            points.append({'step': m['step'], 'minutes': round(minutes, 2),
                           'AP': m['AP'], 'AP50': m['AP50'], 'AP75': m['AP75']})
    points.sort(key=lambda p: p['step'])
    return {'overrides': overrides, 'points': points,
            'total_minutes': round((time.time() - start) / 60, 2)}


def ap_within(points, minutes):
    inside = [p['AP'] for p in points if p['minutes'] <= minutes]
    return max(inside) if inside else None


def table(results, budget=15.0):
    lines = ['| variant | steps | AP at <= %g min | best AP (minutes) | AP at each evaluation '
             '(minutes) |' % budget, '|---|---|---|---|---|']
    for name, r in results.items():
        pts = r['points']
        best = max(pts, key=lambda p: p['AP']) if pts else None
        within = ap_within(pts, budget)
        lines.append('| %s | %d | %s | %s | %s |' % (
            name, r['overrides']['train.max_steps'],
            '%.1f' % (100 * within) if within is not None else '-',
            '%.1f (%.1f)' % (100 * best['AP'], best['minutes']) if best else '-',
            ', '.join('%.1f (%.1f)' % (100 * p['AP'], p['minutes']) for p in pts)))
    return '\n'.join(lines)


# a booster's colour, the same on both decoders
BOOSTER_COLOURS = {'': (31, 119, 180), 'dn': (255, 127, 14), 'group': (44, 160, 44),
                   'dn+group': (214, 39, 40), 'group11': (148, 103, 189),
                   'group+lr5e-4': (140, 86, 75), 'group+lr7e-4': (227, 119, 194),
                   'dn+group+lr7e-4': (127, 127, 127)}


def decoder_and_boosters(name):
    """'detr+dn+group' -> ('detr', 'dn+group'); 'cond' -> ('cond', '')."""
    decoder, _, boosters = name.partition('+')
    return decoder, boosters


def booster_colour(name):
    """'detr+dn' -> the colour of 'dn'; grey for a booster not listed."""
    return BOOSTER_COLOURS.get(decoder_and_boosters(name)[1], (127, 127, 127))


def _legend_order(name):
    return (decoder_and_boosters(name)[0] != 'detr', name)


def plot(results, path, budget=15.0, size=(760, 440)):
    """AP (%) against minutes, one line per variant: the colour names the
    boosters, a thick line with filled points DETR's decoder, a thin one
    with rings the conditional decoder (PIL: no plotting library in the
    dependencies)."""
    from PIL import Image, ImageDraw
    w, h = size
    left, right, top, bottom = 50, 170, 20, 40
    img = Image.new('RGB', size, 'white')
    d = ImageDraw.Draw(img)
    tmax = max([budget] + [p['minutes'] for r in results.values() for p in r['points']])
    amax = 70.0
    x = lambda t: left + (w - left - right) * t / tmax  # noqa: E731
    y = lambda a: h - bottom - (h - top - bottom) * a / amax  # noqa: E731
    for a in range(0, int(amax) + 1, 10):
        d.line([x(0), y(a), x(tmax), y(a)], fill=(225, 225, 225))
        d.text((left - 28, y(a) - 6), f'{a}', fill='black')
    for t in range(0, int(tmax) + 1, 5):
        d.line([x(t), y(0), x(t), y(0) + 4], fill='black')
        d.text((x(t) - 6, y(0) + 8), f'{t}', fill='black')
    d.line([x(budget), y(0), x(budget), y(amax)], fill=(200, 60, 60))
    d.line([x(0), y(50), x(tmax), y(50)], fill=(200, 60, 60))
    d.text((left, h - 16), 'minutes (2 CPU cores, data and compilation included)', fill='black')
    d.text((4, 4), 'AP', fill='black')
    for i, name in enumerate(sorted(results, key=_legend_order)):
        c, decoder = booster_colour(name), decoder_and_boosters(name)[0]
        pts = [(x(p['minutes']), y(100 * p['AP'])) for p in results[name]['points']]
        if len(pts) > 1:
            d.line(pts, fill=c, width=3 if decoder == 'detr' else 1)
        for px, py in pts:  # DETR's decoder: filled points; the conditional one: rings
            d.ellipse([px - 3, py - 3, px + 3, py + 3], outline=c,
                      fill=c if decoder == 'detr' else 'white')
        ly = top + 16 * i + 6
        d.line([w - right + 10, ly, w - right + 30, ly], fill=c,
               width=3 if decoder == 'detr' else 1)
        d.text((w - right + 34, ly - 6), name, fill='black')
    d.text((w - right + 10, top + 16 * len(results) + 10),
           'thick: DETR decoder\nthin: conditional', fill='black')
    img.save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--variants', default=','.join(VARIANTS))
    ap.add_argument('--steps', default='', help='name=steps,...: each variant\'s steps')
    ap.add_argument('--default_steps', type=int, default=12000)
    ap.add_argument('--eval_every', type=int, default=2000)
    ap.add_argument('--out', default=os.path.join(ROOT, 'workdir', 'boosters'))
    ap.add_argument('--table-only', action='store_true', help='only redraw from boosters.json')
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, 'boosters.json')
    results = json.load(open(path)) if os.path.exists(path) else {}
    if not a.table_only:
        steps = {k: int(v) for k, v in (kv.split('=') for kv in a.steps.split(',') if kv)}
        for name in a.variants.split(','):
            if name not in VARIANTS:
                sys.exit(f'unknown variant {name!r}: one of {", ".join(VARIANTS)}')
            results[name] = run_variant(name, steps.get(name, a.default_steps), a.out,
                                        a.eval_every)
            json.dump(results, open(path, 'w'), indent=1)
            print(table({name: results[name]}), flush=True)
    print(table(results))
    plot(results, os.path.join(a.out, 'boosters.png'))
    print('plot:', os.path.join(a.out, 'boosters.png'))


if __name__ == '__main__':
    main()
