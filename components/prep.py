"""Step 1: data prep (`rglcd.data.prep`) -> a versioned Dataset of tar shards + manifest.json.

One step (`prep_data`), or, with data.prep_partitions > 1, `plan_prep_partitions` (the loop's items), a
fan-out of `prep_partition_data` pods (each preps one partition of data.train) and `merge_prep_data`,
which merges them in partition order into the same Dataset a single step writes (docs/architecture.md "Prep in parallel").
"""
from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from rglcd.config import PipelineConfig

_DEFAULTS = PipelineConfig()


@dsl.component(base_image=_DEFAULTS.image, install_kfp_package=False)   # needs torch: the training image
def prep_data(config_json: str, source_version: str, dataset: Output[Dataset]
              ) -> NamedTuple("Outputs", data_version=str, data_pointer=str):
    """Validate and shard `data.train` (with data.prep_workers processes), push the shards to the DVC remote.

    `source_version` (the data check's version of `data.train`) is an input so that KFP's cache key follows
    the data, not the URI string: new files behind the same URI are a cache miss. Returns the data version
    (the manifest's content hash) and the DVC pointer (JSON), which is also in `dataset.metadata["dvc"]`.
    """
    from collections import namedtuple

    from components.dvc_io import publish_dataset
    from components.step_config import load_step_config
    from rglcd.data.prep import prep

    cfg = load_step_config(config_json)
    manifest = prep(cfg, cfg.data.train, dataset.path, workers=cfg.data.prep_workers)
    outputs = namedtuple("Outputs", ["data_version", "data_pointer"])
    return outputs(*publish_dataset(cfg, dataset, manifest, source_version))


@dsl.component(base_image=_DEFAULTS.cpu_image, install_kfp_package=False)
def plan_prep_partitions(config_json: str, partitions: int, source_version: str) -> List[dict]:
    """The fan-out's items: {partition, partitions, config_json, source_version} for each partition
    (`source_version` in each item keeps every partition's cache key on the data, as in `prep_data`).

    Everything the loop body reads from upstream tasks travels in its item: kfp.local 2.17 replaces any
    task output passed into a ParallelFor by the loop item (kubeflow/pipelines
    sdk/python/kfp/local/orchestrator/task_spec_utils.py, create_parameter_loop_iteration_task_spec), and
    the cluster backend reads the items the same way."""
    return [{"partition": i, "partitions": partitions, "config_json": config_json, "source_version": source_version}
            for i in range(partitions)]


@dsl.component(base_image=_DEFAULTS.image, install_kfp_package=False)
def prep_partition_data(config_json: str, partition: int, partitions: int, source_version: str,
                        partial: Output[Dataset]):
    """Validate partition `partition` of `partitions` of `data.train` (and encode its latents) into `partial`.
    `source_version`: only for the cache key (see `prep_data`)."""
    from components.step_config import load_step_config
    from rglcd.data.prep import prep_partition

    cfg = load_step_config(config_json)
    summary = prep_partition(cfg, cfg.data.train, partial.path, partition, partitions)
    partial.metadata.update({"partition": partition, "partitions": partitions, "seen": summary["seen"],
                             "num_records": summary["num_records"]})


@dsl.component(base_image=_DEFAULTS.image, install_kfp_package=False)
def merge_prep_data(config_json: str, partials: Input[List[Dataset]], source_version: str,
                    dataset: Output[Dataset]) -> NamedTuple("Outputs", data_version=str, data_pointer=str):
    """Merge the partitions (ordered by their `partition` metadata) into one Dataset, push it; the outputs
    of `prep_data`."""
    from collections import namedtuple

    from components.dvc_io import publish_dataset
    from components.step_config import load_step_config
    from rglcd.data.prep import prep_merge

    cfg = load_step_config(config_json)
    ordered = sorted(partials, key=lambda a: int(a.metadata.get("partition", -1)))
    manifest = prep_merge(cfg, [a.path for a in ordered], dataset.path)
    outputs = namedtuple("Outputs", ["data_version", "data_pointer"])
    return outputs(*publish_dataset(cfg, dataset, manifest, source_version))
