from __future__ import annotations

import pytest

from tests.train_core.helpers import write_config


@pytest.fixture
def config_factory(tmp_path):
    return lambda overrides=None, name="train.yaml": write_config(tmp_path, overrides, name)
