"""`detr_jax.Predictor` and `detr-jax predict`: the original's results on the
fixture, a folder of awkward images (sizes, modes, EXIF, 16-bit, a corrupt
file) equal to a direct `apply` + post-processing with one compilation per
eval bucket, attention maps, and the command's files."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from detr_jax import Predictor, checkpoints, compilations, draw
from detr_jax.data.images import eval_pixels, read_image
from detr_jax.data.normalize import normalize
from detr_jax.data.transforms import choose_bucket, get_size_with_aspect_ratio
from detr_jax.inference import ImageError, attention_maps
from detr_jax.models import build_model
from detr_jax.postprocess import detections
from tiny_config import get_config

BUCKETS = ((64, 64), (64, 96), (96, 64))


@pytest.fixture(scope='module')
def tiny():
    c = get_config()
    c.data.eval_buckets = BUCKETS
    model = build_model(c.model)
    variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 64, 64, 3)),
                           jnp.ones((1, 64, 64), bool))
    label_map = {i: {'id': 10 + i, 'name': f'class{i}', 'isthing': True}
                 for i in range(c.model.num_classes)}
    return c, variables, label_map


def _awkward_images(folder):
    """{name: path} of images PIL stores in different ways, and a corrupt one."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = {}

    def save(name, im, **kw):
        paths[name] = str(folder / name)
        im.save(paths[name], **kw)
    save('rgb.jpg', Image.fromarray(rng.integers(0, 255, (70, 90, 3), np.uint8)))
    save('gray.png', Image.fromarray(rng.integers(0, 255, (50, 80), np.uint8), 'L'))
    save('cmyk.jpg', Image.fromarray(rng.integers(0, 255, (90, 60, 4), np.uint8), 'CMYK'))
    save('deep.png', Image.fromarray((rng.integers(0, 4096, (64, 64)) * 16).astype(np.uint16)))
    save('rgba.png', Image.fromarray(rng.integers(0, 255, (60, 60, 4), np.uint8), 'RGBA'))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60 wide x 100 high, shown rotated: 100 x 60
    save('rotated.jpg', Image.fromarray(rng.integers(0, 255, (100, 60, 3), np.uint8)),
         exif=exif)
    good = (folder / 'rgb.jpg').read_bytes()
    paths['corrupt.jpg'] = str(folder / 'corrupt.jpg')
    (folder / 'corrupt.jpg').write_bytes(good[:len(good) // 3])
    return paths


def test_images_are_read_as_training_reads_them(tmp_path):
    paths = _awkward_images(tmp_path)
    gray = read_image(paths['gray.png'])
    assert gray.shape == (50, 80, 3) and (gray[..., 0] == gray[..., 2]).all()
    with Image.open(paths['gray.png']) as im:
        np.testing.assert_array_equal(gray[..., 1], np.asarray(im))
    deep = read_image(paths['deep.png'])
    with Image.open(paths['deep.png']) as im:
        assert im.mode.startswith('I')
        raw = np.asarray(im, np.float32)
    np.testing.assert_array_equal(deep[..., 0], (raw / raw.max() * 255).astype(np.uint8))
    assert deep.max() == 255, '16-bit intensities scaled, not clipped to white'
    assert read_image(paths['rotated.jpg']).shape == (60, 100, 3)
    assert read_image(paths['cmyk.jpg']).shape == (90, 60, 3)
    assert read_image(paths['rgba.png']).shape == (60, 60, 3)
    arr16 = np.asarray(Image.open(paths['deep.png']), np.uint16)
    np.testing.assert_array_equal(read_image(arr16), deep)
    with pytest.raises(OSError):
        read_image(paths['corrupt.jpg'])


def test_a_folder_of_mixed_images_equals_direct_apply(tmp_path, tiny):
    c, variables, label_map = tiny
    predictor = Predictor(c.model, variables, label_map, c.data, batch_size=2)
    paths = _awkward_images(tmp_path)
    files = sorted(paths.values())
    with pytest.raises(ImageError, match='corrupt.jpg: cannot read image'):
        predictor(files, threshold=0.0)
    with compilations.record() as rec:
        results = predictor(files, threshold=0.0, errors='skip')
    model, used = build_model(c.model), set()
    for path, r in zip(files, results):
        if path.endswith('corrupt.jpg'):
            assert r == {'error': r['error']} and 'corrupt.jpg' in r['error']
            continue
        image = read_image(path)
        assert r['image_size'] == image.shape[:2]
        size = get_size_with_aspect_ratio(*image.shape[:2], c.data.eval_size,
                                          c.data.eval_max_size)
        bucket = choose_bucket(*size, BUCKETS)
        used.add(bucket)
        x = np.zeros((1,) + bucket + (3,), np.uint8)
        m = np.zeros((1,) + bucket, bool)
        x[0, :size[0], :size[1]], m[0, :size[0], :size[1]] = eval_pixels(image, size), True
        out = model.apply(variables, normalize(jnp.asarray(x), jnp.asarray(m)), jnp.asarray(m))
        d = {k: np.asarray(v)[0] for k, v in detections(out, jnp.asarray([image.shape[:2]])).items()}
        q = r['queries']
        assert sorted(q) == list(range(c.model.num_queries))  # threshold 0: every query
        np.testing.assert_allclose(r['scores'], d['scores'][q], atol=1e-5)
        np.testing.assert_array_equal(r['labels'], d['labels'][q])
        np.testing.assert_allclose(r['boxes'], d['boxes'][q], atol=1e-3)
        assert list(r['category_ids']) == [10 + int(v) for v in r['labels']]
        assert r['names'] == [f'class{int(v)}' for v in r['labels']]
        assert (np.diff(r['scores']) <= 0).all()
    assert len(used) == 3
    runs = [name for name, _ in rec.compiled + rec.loaded if 'from_uint8' in name]
    assert 1 <= len(runs) <= len(used), rec
    with compilations.record() as again:  # a second folder of the same buckets compiles nothing
        predictor(files[:3], threshold=0.5, errors='skip')
    assert not [n for n, _ in again.compiled + again.loaded if 'from_uint8' in n]


def test_attention_maps_sum_to_one_over_real_cells(tiny):
    c, variables, _ = tiny
    model = build_model(c.model)
    x = np.zeros((2, 96, 96, 3), np.float32)
    m = np.zeros((2, 96, 96), bool)
    m[0, :64, :96], m[1, :96, :40] = True, True
    x[m] = 0.5
    _, state = model.apply(variables, jnp.asarray(x), jnp.asarray(m), mutable=['intermediates'])
    maps = {k: np.asarray(v) for k, v in attention_maps(state['intermediates']).items()}
    fm = maps['feature_mask'].reshape(2, -1)
    assert maps['decoder_attention'].shape == (2, c.model.num_queries, fm.shape[1])
    assert maps['encoder_attention'].shape == (2, fm.shape[1], fm.shape[1])
    for key in ('decoder_attention', 'encoder_attention'):
        a = maps[key]
        assert (a[~np.broadcast_to(fm[:, None, :], a.shape)] == 0).all(), key
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)

    predictor = Predictor(c.model, variables, None, c.data)
    image = np.random.default_rng(1).integers(0, 255, (50, 90, 3), np.uint8)
    r = predictor(image, threshold=0.0, return_attention=True)
    n, fh, fw = r['decoder_attention'].shape
    assert n == c.model.num_queries and (fh, fw) == (-(-r['input_size'][0] // 32),
                                                     -(-r['input_size'][1] // 32))
    assert r['encoder_attention'].shape == (fh, fw, fh, fw)
    np.testing.assert_allclose(r['decoder_attention'].sum((1, 2)), 1.0, atol=1e-5)
    np.testing.assert_allclose(r['encoder_attention'].sum((2, 3)), 1.0, atol=1e-5)
    pic = draw.draw_attention(image, r, max_queries=2, points=[(10, 10)])
    assert pic.shape[:2] >= (2 * image.shape[0], 3 * image.shape[1])  # 4 panels, 3 a row


def test_official_checkpoint_through_the_api_is_the_originals_postprocess(reference):
    from conftest import OFFICIAL
    predictor = Predictor.load(str(OFFICIAL / 'checkpoint.pth'))
    results = predictor.predict_normalized(reference['pixels_nchw'].transpose(0, 2, 3, 1),
                                           ~reference['padding_mask'],
                                           reference['post_orig_sizes'], threshold=0.0)
    for i, r in enumerate(results):
        q = r['queries']
        h, w = reference['post_orig_sizes'][i]
        np.testing.assert_allclose(r['scores'], reference['post_scores'][i][q], atol=1e-4)
        np.testing.assert_array_equal(r['labels'], reference['post_labels'][i][q])
        np.testing.assert_allclose(r['boxes'] / [w, h, w, h],
                                   reference['post_boxes_xyxy'][i][q] / [w, h, w, h], atol=1e-4)


def test_predict_command_on_folders(tmp_path, tiny, capsys):
    from detr_jax import predict
    c, variables, label_map = tiny
    model_cfg = ml_collections.ConfigDict(dict(c.model))
    model_cfg.label_map = {str(k): v for k, v in label_map.items()}
    checkpoints.save_converted(tmp_path / 'ckpt', model_cfg, variables)
    rng = np.random.default_rng(2)
    for sub in ('a', 'b'):  # the same base name in two folders
        (tmp_path / sub).mkdir()
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), np.uint8)).save(tmp_path / sub / 'x.png')
    (tmp_path / 'a' / 'broken.png').write_bytes(b'\x89PNG not really')
    Image.fromarray((rng.integers(0, 4096, (48, 64)) * 16).astype(np.uint16)).save(
        tmp_path / 'b' / 'deep.png')
    # a threshold between the best two scores of a/x.png keeps its best box alone
    predictor = Predictor.load(str(tmp_path / 'ckpt'))
    best = predictor(str(tmp_path / 'a' / 'x.png'), threshold=0.0)
    threshold = float(best['scores'][:2].mean())
    status = predict.cli([str(tmp_path / 'a'), str(tmp_path / 'b'), '--checkpoint',
                          str(tmp_path / 'ckpt'), '--out', str(tmp_path / 'out'),
                          '--threshold', str(threshold)])
    assert status == 1  # the broken file
    err = capsys.readouterr().err
    assert 'broken.png: cannot read image' in err
    out = tmp_path / 'out'
    images = json.loads((out / 'images.json').read_text())
    assert [i['picture'] for i in images] == ['a__x_pred.png', 'b__deep_pred.png',
                                              'b__x_pred.png']
    dets = json.loads((out / 'detections.json').read_text())
    first = [d for d in dets if d['image_id'] == images[0]['id']]
    assert len(first) == 1 and first[0]['category_id'] == 10 + int(best['labels'][0])
    np.testing.assert_allclose(first[0]['score'], best['scores'][0], atol=1e-6)
    x0, y0, bw, bh = first[0]['bbox']
    np.testing.assert_allclose([x0, y0, x0 + bw, y0 + bh], best['boxes'][0], atol=1e-3)
    pic = np.asarray(Image.open(out / 'a__x_pred.png').convert('RGB'))
    colour = draw.PALETTE[int(best['labels'][0]) % len(draw.PALETTE)]
    # pixels of the class colour: the box's outline and its label, nowhere else
    edge = np.all(pic == colour, -1)
    ys, xs = np.nonzero(edge)
    assert len(ys), 'the box is drawn'
    x1, y1 = x0 + bw, y0 + bh
    row = np.flatnonzero(edge[int(y0 + 0.75 * bh)])  # below the label: the two sides
    assert len(row) and all(abs(x - x0) <= 3 or abs(x - x1) <= 3 for x in row), (row, x0, x1)
    assert ys.min() >= y0 - 14 and ys.max() <= y1 + 2  # the label may sit above the box
    deep = images[1]
    assert (deep['height'], deep['width']) == (48, 64)
