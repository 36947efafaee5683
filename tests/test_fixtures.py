"""The suite needs nothing outside the repository: the reference fixtures
are committed under tests/fixtures/ and match their checksums, and no test
module reaches for a folder beside the checkout."""
import hashlib
import pathlib
import re
import zipfile

import pytest

from conftest import FIXTURES, OFFICIAL

TESTS = pathlib.Path(__file__).resolve().parent
SUMS = sorted(FIXTURES.glob('*/SHA256SUMS'))


def test_every_fixture_folder_has_checksums():
    folders = sorted(p for p in FIXTURES.iterdir() if p.is_dir())
    assert folders and [s.parent for s in SUMS] == folders


@pytest.mark.parametrize('sums', SUMS, ids=lambda p: p.parent.name)
def test_fixtures_match_their_checksums(sums):
    listed = {}
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    files = {p.relative_to(sums.parent).as_posix() for p in sums.parent.rglob('*')
             if p.is_file() and p.name != 'SHA256SUMS'}
    assert files == set(listed), 'a fixture file is missing or not listed'
    for name, digest in listed.items():
        assert hashlib.sha256((sums.parent / name).read_bytes()).hexdigest() == digest, name


def test_no_test_module_reads_outside_the_repository():
    # the patterns are spelled in pieces so that this file does not match them
    outside = re.compile('|'.join([re.escape('..' + '/shared'), "'" + "shared'",
                                   r'parents\[1\]' + r'\.parent', r'(\.parent){' + '3}']))
    for path in sorted(TESTS.rglob('*.py')) + sorted(TESTS.parent.glob('notebooks/*.ipynb')):
        assert not outside.search(path.read_text()), (path, outside.search(path.read_text()))
    old_conftest = "FIXTURES = ROOT.parent / '" + "shared' / 'fixtures'"
    assert outside.search(old_conftest)  # what the suite once did is caught


def test_the_legacy_checkpoint_is_torch_legacy_format(legacy_checkpoint):
    import torch
    assert not zipfile.is_zipfile(legacy_checkpoint)  # torch's pre-1.6 pickle format
    ours = torch.load(legacy_checkpoint, weights_only=False)['model']
    panoptic = torch.load(OFFICIAL / 'checkpoint.pth', weights_only=False)['model']
    assert len(ours) == 326 and all(v.dtype == torch.float16 for v in ours.values())
    for k, v in ours.items():
        assert torch.equal(v, panoptic['detr.' + k]), k
