"""Step 1: data prep (`rglcd.data.prep.prep`) -> a versioned Dataset of tar shards + manifest.json."""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from rglcd.config import PipelineConfig

_DEFAULTS = PipelineConfig()


@dsl.component(base_image=_DEFAULTS.image, install_kfp_package=False)   # needs torch: the training image
def prep_data(config_json: str, source_version: str, dataset: Output[Dataset]
              ) -> NamedTuple("Outputs", data_version=str, data_pointer=str):
    """Validate and shard `data.train`, push the shards to the DVC remote.

    `source_version` (the data check's version of `data.train`) is an input so that KFP's cache key follows
    the data, not the URI string: new files behind the same URI are a cache miss. Returns the data version
    (the manifest's content hash) and the DVC pointer (JSON), which is also in `dataset.metadata["dvc"]`.
    """
    import json
    from collections import namedtuple

    from components.artifacts import plain
    from components.dvc_io import push_artifact
    from components.step_config import load_step_config
    from rglcd.data.prep import prep

    cfg = load_step_config(config_json)
    manifest = prep(cfg, cfg.data.train, dataset.path)
    pointer = push_artifact(cfg, dataset.path)
    dataset.metadata.update(plain({"dvc": pointer, "data_version": manifest["content_hash"],
                                   "num_records": manifest["num_records"], "dropped": manifest.get("dropped", {}),
                                   "source": manifest.get("source", cfg.data.train),
                                   "source_version": source_version}))
    outputs = namedtuple("Outputs", ["data_version", "data_pointer"])
    return outputs(manifest["content_hash"], json.dumps(pointer))
