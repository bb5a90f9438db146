"""Fine-tuning recipes: YAML files read into a typed, validated schema.

- :mod:`~resbackbone.recipes.schema`: the sections and their checks;
- :mod:`~resbackbone.recipes.reader`: :func:`load_recipe` (``extends``, ``--set``, messages
  that name the dotted path and the right key).
"""

from .reader import load_recipe
from .schema import HEAD_TASKS, EvalConfig, ModelConfig, OptimConfig, Recipe, RecipeError, RunConfig

__all__ = [
    "HEAD_TASKS",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "Recipe",
    "RecipeError",
    "RunConfig",
    "load_recipe",
]
