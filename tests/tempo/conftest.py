from __future__ import annotations

import pytest

from tests.tempo.rig import Rig


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()
