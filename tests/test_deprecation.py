"""Old module paths and names keep working, each with a warning that names the new place."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

from resbackbone.deprecation import MOVED_MODULES

# The __all__ of each module before it moved: what user code may have imported from it.
OLD_NAMES: dict[str, list[str]] = {
    "resbackbone.download": ["DownloadError", "cache_dir", "download_url", "sha256_file"],
    "resbackbone.inference": [
        "CompileFallbackWarning", "InferenceBackbone", "compile_frozen", "fold_batch_norms", "native_low_precision",
        "optimize_for_inference",
    ],
    "resbackbone.data.download": [
        "DATASETS", "MANIFEST", "Archive", "DatasetEntry", "UnverifiedArchiveError", "data_yaml", "download_dataset",
        "get_entry", "manual_instructions",
    ],
    "resbackbone.data.archives": ["UnsafeArchiveError", "archive_kind", "extract_archive"],
    "resbackbone.data.catalog": ["DATASETS", "Archive", "DatasetEntry"],
    "resbackbone.data.layouts": [
        "bccd_layout", "coco2017_layout", "dsb2018_layout", "find_folder", "kvasir_seg_layout", "penn_fudan_layout",
        "split_ids", "voc2012_layout",
    ],
    "resbackbone.data.shapes": ["SHAPES_NAME", "ensure_shapes_dataset", "verify_shapes_dataset"],
    "resbackbone.data.layout": [
        "DetectionRecord", "SegmentationRecord", "find_images", "join_inside", "read_id_list", "resolve_split",
        "sanitize_boxes",
    ],
    "resbackbone.data.coco": ["coco_categories", "index_coco", "load_coco"],
    "resbackbone.data.voc": ["index_voc", "voc_class_names"],
    "resbackbone.data.yolo": ["index_yolo", "label_path", "yolo_class_names"],
    "resbackbone.data.masks": ["VOC_CLASSES", "apply_class_map", "build_class_map", "ignore_code"],
    "resbackbone.bench.engine": ["RESULT_FIELDS", "SCHEMA_VERSION", "TRAIN_FIELDS", "BenchConfig", "run_benchmark"],
    "resbackbone.bench.models": [
        "COMPETITORS", "MODES", "Candidate", "ModeSpec", "build_competitor", "build_mode", "build_reference",
    ],
    "resbackbone.bench.report": ["format_markdown", "format_table", "plot", "write_reports"],
    "resbackbone.bench.train": ["TRAIN_MODELS", "run_train"],
}  # fmt: skip


def test_every_moved_module_is_listed_with_its_old_names() -> None:
    assert set(OLD_NAMES) == set(MOVED_MODULES)


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_module_path_imports_warns_and_serves_its_names(old: str, monkeypatch: pytest.MonkeyPatch) -> None:
    new, elsewhere = MOVED_MODULES[old]
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to {new}; import from there"):
        module = importlib.import_module(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the names themselves come without a second warning
        for name in OLD_NAMES[old]:
            source = importlib.import_module(elsewhere.get(name, new))
            assert getattr(module, name) is getattr(source, name), name
    assert set(OLD_NAMES[old]) - {*elsewhere} <= set(module.__all__)
    with pytest.raises(AttributeError, match=rf"module '{old}' \(moved to '{new}'\) has no attribute 'nope'"):
        _ = module.nope


def test_from_import_of_an_old_path() -> None:
    sys.modules.pop("resbackbone.inference", None)
    with pytest.warns(DeprecationWarning, match="resbackbone.inference moved to resbackbone.optimize"):
        from resbackbone.inference import optimize_for_inference
    from resbackbone.optimize import optimize_for_inference as new

    assert optimize_for_inference is new


@pytest.mark.parametrize(
    ("module", "name", "new"),
    [("resbackbone.engine.predict", "evaluate_checkpoint", "resbackbone.engine.evaluate")],
)
def test_names_that_left_a_module(module: str, name: str, new: str) -> None:
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{name} moved to {new}\.{name}"):
        value = getattr(importlib.import_module(module), name)
    assert value is getattr(importlib.import_module(new), name)
