"""The data package's structure: the format table is the one source of format facts (imports: test_structure.py)."""

from __future__ import annotations

from typing import get_args

import pytest

import resbackbone.data
import resbackbone.data.config
from resbackbone.data import DataConfig
from resbackbone.data.formats import FORMAT_SPECS, FORMAT_TASKS, FORMATS, FormatSpec

from .conftest import REPO_ROOT

DATA = REPO_ROOT / "resbackbone" / "data"


def test_format_names_and_tasks_come_from_the_table() -> None:
    assert FORMATS == tuple(FORMAT_SPECS) == get_args(DataConfig.model_fields["format"].annotation)
    assert {name: spec.tasks for name, spec in FORMAT_SPECS.items()} == FORMAT_TASKS
    for module in (resbackbone.data, resbackbone.data.config):
        assert module.FORMATS is FORMATS and module.FORMAT_TASKS is FORMAT_TASKS
    assert all(isinstance(spec, FormatSpec) and spec.name == name for name, spec in FORMAT_SPECS.items())


@pytest.mark.parametrize("name", list(FORMAT_SPECS))
def test_every_format_is_read_or_read_as_another(name: str) -> None:
    spec = FORMAT_SPECS[name]
    if spec.read_as:  # generated: read with other formats, one per task
        assert spec.generate is not None and spec.index is None and set(spec.read_as) == set(spec.tasks)
        assert all(FORMAT_SPECS[section["format"]].index is not None for section in spec.read_as.values())
    else:
        assert spec.index is not None and (spec.classes is not None or spec.find_classes is not None)
        assert spec.short_field in spec.split_fields and {f for f, _ in spec.required} <= set(spec.split_fields)


def test_a_format_that_cannot_be_read_is_refused_when_declared() -> None:
    with pytest.raises(ValueError, match=r"FormatSpec 'mine' cannot be read: give index= and either classes="):
        FormatSpec(name="mine", tasks=("detection",), split_fields=("list",), short_field="list")
    with pytest.raises(ValueError, match=r"FormatSpec 'mine': read_as is set but generate is not"):
        FormatSpec(name="mine", tasks=("detection",), read_as={"detection": {}})
