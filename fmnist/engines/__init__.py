"""Every way of running a model, behind one interface: the registry and its implementations.

Importing this package imports the implementation modules, which register their
variants (as timm's model packages do); callers then use the public registry API.
"""

from fmnist.engines import keras, openvino  # noqa: F401  (they register their variants)
from fmnist.engines.registry import (
    MODES,
    VARIANTS,
    Engine,
    EngineInfo,
    available_variants,
    check_variant,
    create_engine,
    predict_in_batches,
    variant_artifact,
)

__all__ = [
    "MODES",
    "VARIANTS",
    "Engine",
    "EngineInfo",
    "available_variants",
    "check_variant",
    "create_engine",
    "predict_in_batches",
    "variant_artifact",
]
