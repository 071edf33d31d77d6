"""Step 4: evaluation (`rglcd.evaluate.evaluate`) -> metrics, an HTML page, and the gate decision.

The return value (the task's `Output`) is the gate decision, a plain bool the pipeline's `dsl.If`
reads; `reward` (the student's eval.gate_reward at eval.gate_steps, the number the gate compares with the
teacher's), `fid` and `hps` are plain numbers too (-1.0 when not measured: FID needs eval.fid_reference,
HPS needs hpsv2.1 in eval.rewards).
"""
from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output, OutputPath

from rglcd.config import PipelineConfig

_DEFAULTS = PipelineConfig()


@dsl.component(base_image=_DEFAULTS.image, install_kfp_package=False)
def evaluate_student(config_json: str, model: Input[Model], results: Output[Artifact], metrics: Output[Metrics],
                     page: Output[HTML], reward: OutputPath(float), fid: OutputPath(float), hps: OutputPath(float),
                     metrics_json: OutputPath(str), failed_rules: OutputPath(str)) -> bool:
    """Evaluate the student against the teacher and the production model; return whether the gate passed."""
    import json
    from pathlib import Path

    from components.artifacts import copy_into, plain
    from components.dvc_io import push_artifact
    from components.step_config import load_step_config
    from rglcd.evaluate import evaluate
    from rglcd.registry import production_metrics
    from rglcd.results import evaluation_summary

    cfg = load_step_config(config_json)
    result = evaluate(cfg, model.path, results.path, production_metrics=production_metrics(cfg))
    summary = evaluation_summary(result)
    copy_into(summary["html"], page.path)
    copy_into(summary["metrics_file"], metrics.path)
    results.metadata.update(plain({"dvc": push_artifact(cfg, results.path)}))
    numbers = summary["numbers"]
    for key, value in numbers.items():
        metrics.log_metric(key, value)
    metrics.metadata["gate"] = plain(summary["gate"])
    Path(reward).write_text(repr(numbers.get("reward", -1.0)))
    Path(fid).write_text(repr(numbers.get("fid", -1.0)))
    Path(hps).write_text(repr(numbers.get("hps", -1.0)))
    Path(metrics_json).write_text(json.dumps(numbers))
    Path(failed_rules).write_text(",".join(summary["gate"]["failed_rules"]))
    print("gate:", json.dumps(summary["gate"], indent=1))
    return summary["gate"]["passed"]
