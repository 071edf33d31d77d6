"""Step 0: resolve and validate the run's config before any data or GPU step starts."""
from typing import NamedTuple

from kfp import dsl

from rglcd.config import PipelineConfig

_DEFAULTS = PipelineConfig()


@dsl.component(base_image=_DEFAULTS.cpu_image, install_kfp_package=False)
def configure(config_json: str, preset: str, data_uri: str, max_steps: int
              ) -> NamedTuple("Outputs", config=str, prep_config=str, lrm_config=str):
    """Resolve `preset` + `config_json` + the data/max-steps overrides into the run's config.

    Outputs the full config and the slices the cached steps read (prep, LRM pretraining), so their
    cache keys follow the data, not unrelated training settings. A bad config fails here, first.
    """
    from collections import namedtuple

    from components.step_config import LRM_SECTIONS, PREP_SECTIONS, config_json_of, resolve_config

    cfg = resolve_config(config_json, preset, data_uri, max_steps)
    outputs = namedtuple("Outputs", ["config", "prep_config", "lrm_config"])
    return outputs(config_json_of(cfg), config_json_of(cfg, PREP_SECTIONS), config_json_of(cfg, LRM_SECTIONS))
