"""Step 2 (LRM-guided presets): contrastive pretraining of the latent reward model (docs/method.md 4.2).

The data arrive by DVC pointer, not as an input artifact, so the step's cache key is the data
version: a re-run of prep that yields the same data reuses the pretrained LRM.
"""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Model, Output

from rglcd.config import PipelineConfig

_DEFAULTS = PipelineConfig()


@dsl.component(base_image=_DEFAULTS.image, install_kfp_package=False)
def pretrain_lrm(config_json: str, data_pointer: str, lrm: Output[Model]) -> NamedTuple("Outputs", lrm_pointer=str):
    """Pull the prepared data by pointer, pretrain the LRM into `lrm`, push it to the DVC remote.

    `lrm.metadata["data_version"]` is the data's manifest content hash, the value prep and the registry
    record under that key; `data_md5` is the DVC directory hash of the pointer the data came from."""
    import json
    import tempfile
    from collections import namedtuple

    from components.artifacts import plain
    from components.dvc_io import pull_artifact, push_artifact
    from components.step_config import load_step_config
    from rglcd.data import data_version
    from rglcd.lrm import pretrain_lrm_from_data

    cfg = load_step_config(config_json)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = pull_artifact(cfg, data_pointer, f"{tmp}/data")
        version = data_version(data_dir)
        info = pretrain_lrm_from_data(cfg, data_dir, lrm.path)
    pointer = push_artifact(cfg, lrm.path)
    lrm.metadata.update(plain({"dvc": pointer, "data_version": version,
                               "data_md5": json.loads(data_pointer)["outs"][0]["md5"],
                               **{key: info[key] for key in ("steps", "first_loss", "last_loss")}}))
    return namedtuple("Outputs", ["lrm_pointer"])(json.dumps(pointer))
