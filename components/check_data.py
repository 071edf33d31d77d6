"""Step 1: is there new data? (`rglcd.registry.datacheck.check_new_data`; docs/operations.md 4.6).

The return value (the task's `Output`) is whether the run goes on: the pipeline's `dsl.If` reads it, as the
evaluation gate's. Unchanged data and no `force`: False, and the run ends here with "no new data" in
`reason`, before prep and before any GPU is requested. `source_version` feeds prep's cache key.
"""
from kfp import dsl
from kfp.dsl import OutputPath

from rglcd.config import PipelineConfig

_DEFAULTS = PipelineConfig()


@dsl.component(base_image=_DEFAULTS.cpu_image, install_kfp_package=False)
def check_data(config_json: str, force: bool, source_version: OutputPath(str), reason: OutputPath(str)) -> bool:
    """Version `data.train` cheaply, compare it with the production model's; return whether to train."""
    import json
    from pathlib import Path

    from components.step_config import load_step_config
    from rglcd.registry.datacheck import check_new_data

    check = check_new_data(load_step_config(config_json), force=force)
    Path(source_version).write_text(check.source_version)
    Path(reason).write_text(check.reason)
    print("data check:", json.dumps(check.as_dict(), indent=1))
    return check.proceed
