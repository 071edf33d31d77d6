"""Step 5 (only when the gate passed): register the student in the model registry (MLflow)."""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Model

from rglcd.config import PipelineConfig

_DEFAULTS = PipelineConfig()


@dsl.component(base_image=_DEFAULTS.cpu_image, install_kfp_package=False)
def register_model(config_json: str, model: Input[Model], model_pointer: str, metrics_json: str,
                   data_version: str, run_id: str, data_pointer: str = ""
                   ) -> NamedTuple("Outputs", version=str, model_name=str):
    """Register the student's DVC pointer with its metrics, config, data version and KFP run id.

    `data_version` is the data id (prep's content hash); `data_pointer` (JSON) only says where the
    dataset is stored: recorded beside it, and committed with `storage.git_registry`.

    `model` is an input for lineage only (KFP links the registered version to the trained artifact);
    the registry stores the pointer, never a second copy of the weights."""
    import json
    from collections import namedtuple

    from components.step_config import load_step_config
    from rglcd.registry import register
    from rglcd.storage import Pointer

    cfg = load_step_config(config_json)
    pointer = Pointer.from_dvc(json.loads(model_pointer), source="model_pointer parameter")
    data = Pointer.from_dvc(json.loads(data_pointer), source="data_pointer parameter") if data_pointer else None
    info = register(cfg, pointer, json.loads(metrics_json), json.loads(config_json), data_version, run_id=run_id,
                    data_pointer=data)
    print(info.summary())
    return namedtuple("Outputs", ["version", "model_name"])(str(info.version), info.name)
