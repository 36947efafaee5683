"""`detr-jax predict`: a checkpoint on image files and folders, through
`inference.Predictor`.

Writes to `--out`:
  NAME_pred.png      the boxes with names and scores (and, for a panoptic
                     checkpoint, the segments' overlay beside them)
  detections.json    COCO's results format: [{'image_id', 'category_id' (the
                     checkpoint's own ids), 'bbox' [x, y, w, h] pixels,
                     'score'}]
  images.json        [{'id', 'file_name' (the input), 'height', 'width',
                     'picture' (NAME_pred.png)}]: what image_id means
  panoptic/NAME.png + panoptic.json   (panoptic checkpoints) COCO's panoptic
                     format
NAME is the file's stem, or its path below the inputs' common folder (with
'__' for '/') when two inputs share a stem. An unreadable file is reported
by name; the others still run (the exit status is then 1).
"""
import argparse
import os
import sys

from detr_jax import draw
from detr_jax.console import Bar
from detr_jax.data.images import read_image
from detr_jax.inference import Predictor, coco_results
from detr_jax.panoptic_format import write_ids
from detr_jax.paths import as_path, write_json, write_png

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.gif')
DETAILS_UP_TO = 8  # print every detection when there are at most this many images


def list_images(inputs):
    """Files, and the images directly in folders (sorted) -> paths; raises
    FileNotFoundError naming an input that does not exist."""
    paths = []
    for p in inputs:
        if os.path.isdir(p):
            paths += sorted(os.path.join(p, f) for f in os.listdir(p)
                            if f.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.exists(p):
            paths.append(p)
        else:
            raise FileNotFoundError(f'{p}: no such file or folder')
    return paths


def output_names(paths):
    """A distinct name per input: its stem, or where stems collide its path
    below the inputs' common folder, '/' -> '__', suffix dropped."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    return [os.path.splitext(os.path.relpath(p, root))[0].replace(os.sep, '__')
            for p in absolute]


def cli(argv):
    ap = argparse.ArgumentParser(prog='detr-jax predict', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('images', nargs='+', help='image files or folders')
    ap.add_argument('--checkpoint', required=True,
                    help='a workdir, a converted folder, an official .pth, a Hugging Face '
                         'checkpoint or a published name (e.g. detr_resnet50)')
    ap.add_argument('--out', default='predictions')
    ap.add_argument('--threshold', type=float, default=0.7)
    ap.add_argument('--panoptic_threshold', type=float, default=0.85,
                    help='panoptic checkpoints: the score a query needs to make a segment')
    ap.add_argument('--batch_size', type=int, default=None,
                    help='images per run of the model (default: 1 on a CPU, 8 otherwise)')
    a = ap.parse_args(argv)
    try:
        paths = list_images(a.images)
    except FileNotFoundError as e:
        print(f'detr-jax predict: {e}', file=sys.stderr)
        return 1
    if not paths:
        print(f'detr-jax predict: no images in {a.images}', file=sys.stderr)
        return 1
    predictor = Predictor.load(a.checkpoint, batch_size=a.batch_size)
    label_map, out = predictor.label_map, as_path(a.out)
    names = output_names(paths)
    detections, images, annotations, failed = [], [], [], []
    bar = Bar(len(paths), 'predict') if len(paths) > DETAILS_UP_TO else None
    results = predictor.predict_iter(paths, a.threshold, panoptic_threshold=a.panoptic_threshold,
                                     errors='skip')
    for image_id, (p, name, r) in enumerate(zip(paths, names, results)):
        if 'error' in r:
            failed.append(p)
            print(f'detr-jax predict: {r["error"]}', file=sys.stderr)
        else:
            image = read_image(p)
            pic = draw.draw_boxes(image, r['boxes'], r['labels'], r['scores'], label_map)
            if 'panoptic' in r:
                seg = r['panoptic']
                pic = draw.grid([pic, draw.draw_panoptic(image, seg['ids'], seg['segments_info'],
                                                         label_map)], cols=2)
                write_ids(out / 'panoptic' / f'{name}.png', seg['ids'])
                annotations.append({'image_id': image_id, 'file_name': f'{name}.png',
                                    'image': p, 'segments_info': seg['segments_info']})
            write_png(out / f'{name}_pred.png', pic)
            h, w = r['image_size']
            images.append({'id': image_id, 'file_name': p, 'height': h, 'width': w,
                           'picture': f'{name}_pred.png'})
            detections += coco_results(r, image_id)
            if bar is None:
                _print_details(p, r, out / f'{name}_pred.png', label_map)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    write_json(out / 'detections.json', detections)
    write_json(out / 'images.json', images)
    if annotations:
        write_json(out / 'panoptic.json', {'annotations': annotations})
    print(f'{len(images)} images, {len(detections)} detections -> {out}/ (detections.json, '
          f'images.json, *_pred.png{", panoptic.json, panoptic/" if annotations else ""})')
    if failed:
        print(f'detr-jax predict: {len(failed)} unreadable: {", ".join(failed)}', file=sys.stderr)
        return 1
    return 0


def _print_details(path, r, picture, label_map):
    print(f'{path}: {len(r["scores"])} detections -> {picture}')
    if 'panoptic' in r:
        names = [label_map.get(s['label'], {}).get('name', str(s['category_id']))
                 for s in r['panoptic']['segments_info']]
        print(f'  {len(names)} segments: {", ".join(names)}')
    for s, n, b in zip(r['scores'], r['names'], r['boxes']):
        print(f'  {n:>12s} {s:.2f}  [{", ".join(f"{v:.0f}" for v in b)}]')
