"""``validate`` on in-memory data: classification label ranges and the dev -> valid rename."""

from __future__ import annotations

import numpy as np
import pytest

from gsit.data import (
    validate,
)
from gsit.errors import DataError
from tests.data.helpers import classification_data


def test_validate_classification_range_and_dev_rename():
    data = validate(classification_data([0, 5, 19]))
    assert data.num_classes == 20 and "valid" in data.splits and data.splits["valid"].name == "valid"
    with pytest.raises(DataError, match=r"'train' key 'labels' holds class id 20 at row 1, outside 0\.\.19"):
        validate(classification_data([0, 20]))
    with pytest.raises(DataError, match=r"class id -1"):
        validate(classification_data([-1, 2]))


def test_validate_float_labels_for_classification_rejected():
    data = classification_data([0, 1])
    data.splits["train"].labels = np.array([0.0, 1.0])
    with pytest.raises(DataError, match="integer class ids"):
        validate(data)
