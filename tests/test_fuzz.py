"""Fuzzing the recipe loader, the weight-string parser and the YOLO names file.

Any input either gives a valid object or raises the documented error type
(RecipeError, ValueError/TypeError, DataError), never a stray exception from
deep inside. The annotation parsers (COCO, VOC, YOLO labels, masks) are fuzzed
in test_data_fuzz.py; the regressions it found are pinned here as examples.
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resbackbone.data import DataConfig, DataError, build_dataset, check_dataset
from resbackbone.recipes import Recipe, RecipeError, load_recipe
from resbackbone.registry import get_spec
from resbackbone.weights import ResolvedWeights, resolve_weights

from .data_writers import picture, save

FUZZ = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ recipes

SECTIONS = {
    "model": ["head", "backbone", "backbone_weights", "weights", "output_stride", "trainable_stages", "norm", "loss"],
    "data": ["format", "root", "image_size", "classes", "train", "val", "augment", "ignore_index", "class_map"],
    "optim": ["optimizer", "lr", "epochs", "batch_size", "accumulate", "amp", "ema", "milestones", "schedule"],
    "eval": ["every", "split", "metric", "batch_size"],
    "run": ["output", "seed", "device", "workers", "nan_policy", "max_steps_per_epoch"],
}
GOOD_VALUES = ["deeplabv3plus", "faster_rcnn", "test_resnet", "shapes", "coco", "voc", "adamw", "bf16", "miou", "skip"]

scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(GOOD_VALUES),
    st.text(max_size=12),
)
value = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def recipe_mapping(draw: st.DrawFn) -> dict[object, object]:
    raw: dict[object, object] = {}
    for section, keys in SECTIONS.items():
        if draw(st.booleans()):
            continue
        body = draw(st.one_of(scalar, st.just({})))
        if isinstance(body, dict):
            for key in draw(st.lists(st.sampled_from([*keys, "bogus", "lrr"]), max_size=5, unique=True)):
                body[key] = draw(value)
        raw[section] = body
    extras = draw(st.dictionaries(st.one_of(st.sampled_from(["name", "extends", "description"]), scalar), value))
    raw.update(extras)
    return raw


dotted = st.one_of(st.sampled_from([f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys]), st.text(max_size=10))
override = st.builds(lambda k, sep, v: f"{k}{sep}{v}", dotted, st.sampled_from(["=", "", "=="]), st.text(max_size=12))

TRICKY_YAML = [
    "a: &a [*a]\n",  # a list that holds itself
    "model: !!python/object/apply:os.system ['true']\n",
    "? [a, b]\n: 1\n",  # an unhashable key
    'extends: "\\0x"\n',
    "extends: .\n",
    "extends: 5\n",
    'model: {head: deeplabv3plus, backbone: test_resnet}\ndata: {format: shapes, root: "\\0"}\n',
    'model: {head: deeplabv3plus, backbone: test_resnet}\ndata: {format: coco, root: "\\0"}\n',
    "- 1\n- 2\n",
    "{model: {head: fpn, backbone: [1]}, data: {format: shapes}}",
]


def _check_recipe(path: Path, overrides: list[str]) -> None:
    try:
        recipe = load_recipe(path, overrides=overrides)
    except RecipeError as exc:
        assert str(exc)
    else:
        assert isinstance(recipe, Recipe)


@FUZZ
@given(raw=recipe_mapping(), overrides=st.lists(override, max_size=3))
def test_fuzz_recipe_mappings(raw: dict[object, object], overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True))
        _check_recipe(path, overrides)


@FUZZ
@given(text=st.one_of(st.sampled_from(TRICKY_YAML), st.text(max_size=80)), binary=st.binary(max_size=20))
@example(text="", binary=b"\xff\xfe\x00")  # not UTF-8
def test_fuzz_recipe_text(text: str, binary: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_bytes(text.encode() + binary)
        _check_recipe(path, [])


def test_a_valid_recipe_survives_the_fuzz_helpers(tmp_path: Path) -> None:
    """The fuzz strategies can produce a valid recipe, so the success branch is reachable."""
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump({"model": {"head": "deeplabv3plus", "backbone": "test_resnet"}, "data": {"format": "shapes"}})
    )
    assert load_recipe(path, overrides=["optim.lr=0.5"]).optim.lr == 0.5
    path.write_bytes(b"model: \xff\n")
    with pytest.raises(RecipeError, match=r"r\.yaml is not UTF-8 text"):
        load_recipe(path)


# ------------------------------------------------------------------ weight strings

weight_text = st.one_of(
    st.text(max_size=40),
    st.builds(
        str.__add__,
        st.sampled_from(["torchvision:", "timm:", "https://", "http://", "imagenet", "~", "/", "./", "file:"]),
        st.text(alphabet=string.printable, max_size=30),
    ),
    st.text(alphabet="ab/.", min_size=250, max_size=300),
)


@FUZZ
@given(
    arch=st.sampled_from(["resnet18", "resnet50d", "test_resnet"]),
    weights=st.one_of(weight_text, st.integers(), st.none(), st.binary(max_size=4), st.lists(st.text(max_size=2))),
)
@example(arch="resnet18", weights="~nosuchuser/w.pth")
@example(arch="resnet18", weights="x" * 300 + ".pth")
@example(arch="resnet18", weights="a/" + "b" * 300)
@example(arch="resnet18", weights="http://[::1/w.pth#sha256=" + "0" * 64)
@example(arch="resnet18", weights="torchvision:")
@example(arch="resnet18", weights="timm:")
@example(arch="resnet18", weights="timm:.")
@example(arch="test_resnet", weights="imagenet")
def test_fuzz_weight_strings(arch: str, weights: object) -> None:
    spec = get_spec(arch)
    try:
        resolved = resolve_weights(spec, weights)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        assert str(exc)
    else:
        assert isinstance(resolved, ResolvedWeights) and isinstance(resolved.path, Path)


def test_weight_strings_resolve_offline(tmp_path: Path, torch_home: Path) -> None:
    """The parser's success branches: a local file, a pinned URL, a registered tag (nothing is fetched)."""
    spec = get_spec("resnet18")
    local = tmp_path / "w.pth"
    local.write_bytes(b"")
    assert resolve_weights(spec, str(local)).path == local
    url = resolve_weights(spec, "https://example.com/w.pth#sha256=" + "ab" * 32)
    assert url.url == "https://example.com/w.pth" and url.sha256 == "ab" * 32
    assert resolve_weights(spec, "torchvision:IMAGENET1K_V1").url.startswith("https://")
    with pytest.raises(ValueError, match=r"'~nosuchuser/w\.pth'.*home folder of"):
        resolve_weights(spec, "~nosuchuser/w.pth")
    with pytest.raises(ValueError, match=r"is not a usable path \(File name too long\)"):
        resolve_weights(spec, "x" * 300 + ".pth")


# ------------------------------------------------------------------ YOLO names file and label regressions


@FUZZ
@given(content=st.one_of(st.binary(max_size=30), st.text(max_size=40).map(str.encode), value.map(yaml.safe_dump)))
@example(content=b"\xff\xfe")
@example(content=b"names: {0: a, x: b}")
@example(content=b"- a\n- b\n")
def test_fuzz_yolo_names_file(content: bytes | str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save(root / "images" / "train" / "a.png", picture(24, 32))
        (root / "data.yaml").write_bytes(content.encode() if isinstance(content, str) else content)
        cfg = DataConfig(format="yolo", root=root, train="images/train", image_size=32)
        try:
            build_dataset(cfg, "train", task="detection", train=False, mean=(0.5,) * 3, std=(0.5,) * 3)
        except DataError as exc:
            assert "data.yaml" in str(exc)


@pytest.mark.parametrize(
    "line",
    [
        "inf 0.5 0.5 0.2 0.2",
        "nan 0.5 0.5 0.2 0.2",
        "0 nan 0.5 0.2 0.2",
        "0 0.5 0.5 inf 1",
        "0 0.1 0.1 nan 0.2 0.3 0.3 0.1 0.4",
    ],
)
def test_yolo_non_finite_numbers_are_reported(tmp_path: Path, line: str) -> None:
    save(tmp_path / "images" / "train" / "a.png", picture(24, 32))
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text(line + "\n0 0.5 0.5 0.2 0.2\n")
    cfg = DataConfig(format="yolo", root=tmp_path, classes=["a"], train="images/train", image_size=32)
    problems = check_dataset(cfg, task="detection")
    assert any(p.severity == "error" and "line 1" in p.message and "a.txt" in str(p) for p in problems), problems
    with pytest.raises(DataError, match=r"a\.txt.*line 1"):
        build_dataset(cfg, "train", task="detection", train=False, mean=(0.5,) * 3, std=(0.5,) * 3)
