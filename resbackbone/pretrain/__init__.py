"""Self-supervised pretraining of any registered backbone on unlabeled images, and the backbone files it writes.

- :mod:`~resbackbone.pretrain.config`: the pretraining recipe (``model``, ``pretrain``,
  ``optim``, ``run``) and :func:`load_pretrain_recipe`;
- :mod:`~resbackbone.pretrain.methods`: the methods as a table (:data:`METHODS`:
  SimCLR, MoCo v2, BYOL, DenseCL), their heads and losses from lightly;
- :mod:`~resbackbone.pretrain.views`: the augmented views (lightly's transforms,
  albumentations for grayscale, 16-bit and N-channel images);
- :mod:`~resbackbone.pretrain.images`: finding, checking and reading the unlabeled images;
- :mod:`~resbackbone.pretrain.monitor`: the dense linear probe and the collapse check;
- :mod:`~resbackbone.pretrain.trainer`: :class:`Pretrainer`, the run on the fine-tuning engine;
- :mod:`~resbackbone.pretrain.export`: ``backbone.safetensors`` + ``backbone.json``
  (:func:`write_backbone`, :func:`export_backbone` for any run's backbone).

lightly is imported when a method is built: ``pip install 'resbackbone[pretrain]'``.
"""

from .config import (
    ImageSource,
    MonitorConfig,
    PretrainConfig,
    PretrainModelConfig,
    PretrainRecipe,
    ViewsConfig,
    load_pretrain_recipe,
)
from .export import BACKBONE_FILE, export_backbone, write_backbone
from .methods import METHODS, MethodSpec, SSLModel, build_method
from .trainer import LIGHTLY_HINT, Pretrainer

__all__ = [
    "BACKBONE_FILE",
    "LIGHTLY_HINT",
    "METHODS",
    "ImageSource",
    "MethodSpec",
    "MonitorConfig",
    "PretrainConfig",
    "PretrainModelConfig",
    "PretrainRecipe",
    "Pretrainer",
    "SSLModel",
    "ViewsConfig",
    "build_method",
    "export_backbone",
    "load_pretrain_recipe",
    "write_backbone",
]
