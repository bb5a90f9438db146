"""Fine-tuning recipes: YAML files loaded into a typed, validated schema.

A recipe has five sections — ``model``, ``data``, ``optim``, ``eval``, ``run`` —
and may start from another with ``extends: base.yaml`` (a path relative to the
recipe; mappings merge key by key, everything else is replaced). Any value can
be overridden from the command line: ``--set optim.lr=0.005``. Unknown or
misspelt keys are errors that name the dotted path and suggest the right key.

Example::

    extends: quickstart.yaml
    model: {backbone: resnet34}
    optim: {lr: 0.01, epochs: 12}
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .schema import Recipe, RecipeError

__all__ = ["load_recipe"]

SchemaT = TypeVar("SchemaT", bound=BaseModel)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _absolute(path: Path, what: str) -> Path:
    """``path.resolve()``, with a path the OS cannot take (a NUL byte, say) reported as a RecipeError."""
    try:
        return path.resolve()
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{what} {str(path)!r} is not a usable path ({exc}); fix the path.") from None


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in chain:
        raise RecipeError(f"{path}: 'extends' forms a cycle: {' -> '.join(map(str, (*chain, path)))}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"Cannot read recipe {path}: {exc.strerror or exc}. Check the path.") from exc
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML (safe loader; Python tags are refused): {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{path} must hold a mapping of sections (model, data, optim, eval, run), not a {type(raw).__name__}"
        )
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str):
        raise RecipeError(f"{path}: 'extends' must be a path to another recipe, got {base_name!r}")
    base_path = _absolute(path.parent / base_name, f"{path}: 'extends'")
    base = _read_yaml(base_path, (*chain, path))
    base.pop("name", None)
    return _merge(base, raw)


def _set_override(raw: dict[str, Any], assignment: str) -> None:
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {assignment!r} is not KEY=VALUE; e.g. --set optim.lr=0.005")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {assignment!r}: cannot parse the value {text!r}: {exc}") from exc
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"--set {assignment!r}: {part!r} holds a value, not a section")
        node = child
    node[parts[-1]] = value


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _clean_loc(
    loc: tuple[Any, ...], *, unknown_last: bool, schema: type[BaseModel] = Recipe
) -> tuple[tuple[Any, ...], list[str]]:
    """Drop pydantic's union-member tags from ``loc``; also return the keys valid where it ends."""
    clean: list[Any] = []
    model: type[BaseModel] | None = schema
    valid: list[str] = []
    for i, part in enumerate(loc):
        if model is None or isinstance(part, int):
            clean.append(part)
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        valid = list(fields)
        if part in fields:
            clean.append(part)
            model = _submodel(fields[part].annotation)
        elif unknown_last and i == len(loc) - 1:
            clean.append(part)
    return tuple(clean), valid


def _format_errors(exc: ValidationError, source: str, schema: type[BaseModel] = Recipe) -> str:
    lines = []
    for error in exc.errors():
        unknown = error["type"] == "extra_forbidden"
        loc, valid = _clean_loc(tuple(error["loc"]), unknown_last=unknown, schema=schema)
        path = ".".join(str(p) for p in loc) or "(top level)"
        if unknown:
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else ""
            listing = f" Valid keys here: {', '.join(valid)}." if valid and not close else ""
            lines.append(f"  {path}: unknown key{hint}{listing}")
        elif error["type"] == "missing":
            lines.append(f"  {path}: required key is missing")
        else:
            message = error["msg"].removeprefix("Value error, ")
            value = error.get("input")
            got = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
            lines.append(f"  {path}: {message}{got}")
    return f"Invalid recipe {source}:\n" + "\n".join(dict.fromkeys(lines))


def load_recipe(
    path: str | os.PathLike[str],
    *,
    overrides: list[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    schema: type[SchemaT] = Recipe,  # type: ignore[assignment]
) -> SchemaT:
    """Load, merge (``extends``), override (``--set``) and validate a recipe file.

    Args:
        path: The YAML file.
        overrides: ``["optim.lr=0.005", ...]``; values are parsed as YAML.
        data_root: Replaces ``data.root`` (the CLI's ``--data``); must exist.
        schema: The pydantic model the file is validated into: :class:`Recipe`
            (fine-tuning) or another recipe kind, e.g. the pretraining recipe of
            :mod:`resbackbone.pretrain`. It is validated with the context
            ``{"base_dir": <the recipe's folder>}``, against which its validators
            may resolve relative paths.

    Returns:
        The validated recipe, with ``data.root`` made absolute.

    Raises:
        RecipeError: The file cannot be read or parsed, a key is unknown, a
            value is invalid, or ``data_root`` does not exist.
    """
    path = Path(path)
    raw = _read_yaml(_absolute(path, "Recipe"))
    raw.setdefault("name", path.stem)
    for assignment in overrides or []:
        _set_override(raw, assignment)
    data = raw.get("data")
    if data_root is not None:
        root = Path(data_root).expanduser()
        if not root.exists():
            raise RecipeError(f"--data {data_root}: no such folder. Pass the dataset's root folder.")
        if isinstance(data, dict) and data.get("format") == "shapes":
            raise RecipeError(
                f"--data {data_root}: recipe {path.name} trains on the built-in generated dataset (format 'shapes'), "
                "which takes no data folder; drop --data, or pick a recipe for your data's format."
            )
        if isinstance(data, dict):
            data["root"] = str(root.resolve())
    if isinstance(data, dict) and data.get("root") is not None:
        data["root"] = str(_absolute(path.resolve().parent / str(data["root"]), f"{path}: data.root"))
    try:
        return schema.model_validate(raw, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, str(path), schema)) from None
