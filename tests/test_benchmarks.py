"""The benchmark harness's table handling (the measurements themselves run
in benchmarks/, not in tests)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import run  # noqa: E402


def test_partial_run_replaces_its_rows_in_place():
    readme = ('x\n<!-- BENCHMARKS -->\n' + run.table([('a', 1.0, 2.0, 'n1'), ('b', 3.0, None, '')])
              + '\n<!-- /BENCHMARKS -->\n')
    merged = run.merge_rows([('b', 5.0, None, 'new'), ('c', 1.0, 4.0, '')], readme)
    assert merged == [('a', 1.0, 2.0, 'n1'), ('b', 5.0, None, 'new'), ('c', 1.0, 4.0, '')]
    assert '| a | 1 | 2 | 0.50 | n1 |' in run.table(merged)


def test_the_table_goes_to_benchmarks_readme_keeping_its_commentary(tmp_path):
    path = tmp_path / 'README.md'
    path.write_text('# Benchmarks\nintro\n<!-- BENCHMARKS -->\nold\n<!-- /BENCHMARKS -->\nnotes\n')
    run.write_table(run.table([('a', 1.0, 2.0, 'n1')]), str(path))
    text = path.read_text()
    assert text.startswith('# Benchmarks\nintro\n') and text.endswith('\nnotes\n')
    assert '| a | 1 | 2 | 0.50 | n1 |' in text and 'old' not in text
    assert run.TABLE_FILE.endswith(os.path.join('benchmarks', 'README.md'))


def test_boosters_table_and_plot(tmp_path):
    import boosters
    import numpy as np
    from PIL import Image
    results = {
        'detr': {'overrides': {'train.max_steps': 4000}, 'points': [
            {'step': 2000, 'minutes': 4.0, 'AP': 0.10, 'AP50': 0.3, 'AP75': 0.05},
            {'step': 4000, 'minutes': 16.0, 'AP': 0.30, 'AP50': 0.6, 'AP75': 0.2}]},
        'detr+group': {'overrides': {'train.max_steps': 4000}, 'points': [
            {'step': 2000, 'minutes': 5.0, 'AP': 0.20, 'AP50': 0.4, 'AP75': 0.1}]}}
    text = boosters.table(results)
    # the AP within the budget is the best evaluation that came before it
    assert '| detr | 4000 | 10.0 | 30.0 (16.0) | 10.0 (4.0), 30.0 (16.0) |' in text
    assert '| detr+group | 4000 | 20.0 | 20.0 (5.0) | 20.0 (5.0) |' in text
    boosters.plot(results, tmp_path / 'p.png')
    img = np.asarray(Image.open(tmp_path / 'p.png'))
    # each variant's colour is drawn (lines, points, legend): a booster's
    # colour is the same on both decoders
    assert boosters.booster_colour('detr+group') == boosters.booster_colour('cond+group')
    for colour in (boosters.booster_colour('detr'), boosters.booster_colour('detr+group')):
        assert (img == colour).all(-1).sum() > 20, colour
