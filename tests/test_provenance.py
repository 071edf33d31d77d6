"""`rglcd.provenance`: one provenance block, recorded alike by training, evaluation and export."""
import json
from importlib import metadata
from types import SimpleNamespace

import torch

from rglcd import provenance
from rglcd.config import load_config
from rglcd.config.fields import to_dict

BLOCK = {"created", "git_revision", "versions", "device", "device_name", "config"}


def test_training_evaluation_and_export_record_the_same_block(tmp_path, monkeypatch):
    from rglcd.evaluate.core import _run_info
    from rglcd.export import _manifest
    from rglcd.train.runinfo import write_run_info

    monkeypatch.setenv(provenance.REVISION_ENV, "rev-123")
    cfg = load_config("tiny-random")
    run = write_run_info(cfg, tmp_path / "run", {"num_records": 3}, 2, "cpu")
    assert json.loads((tmp_path / "run" / "run.json").read_text()) == run
    evaluation = _run_info(cfg, tmp_path / "no-export", "tiny:epsilon", torch.device("cpu"), torch.float32)
    teacher = SimpleNamespace(path=tmp_path / "teacher", prediction_type="epsilon")
    export = _manifest(teacher, "tiny:epsilon", cfg, torch.device("cpu"))
    for record in (run, evaluation, export):
        assert BLOCK <= set(record)
        assert (record["git_revision"], record["device"], record["device_name"]) == ("rev-123", "cpu", "cpu")
        assert record["config"] == to_dict(cfg) and record["versions"]["torch"] == torch.__version__
    assert set(run) - BLOCK == {"data", "world_size", "resumes", "execution", "warm_start"}
    assert (run["data"], run["world_size"], run["resumes"], run["execution"], run["warm_start"]) == \
        ({"num_records": 3}, 2, [], {}, {"from": "teacher"})
    assert set(evaluation) - BLOCK == {"model_dir", "teacher", "student_trained_from", "dtype"}
    assert evaluation["versions"].keys() - run["versions"].keys() <= {"clean-fid"}      # evaluation adds clean-fid
    assert set(export) - BLOCK == {"format", "pipeline", "teacher", "teacher_path", "prediction_type"}
    assert _manifest(teacher, None, None, torch.device("cpu"))["config"] is None


def test_versions_keep_the_full_string_of_the_code_that_runs(monkeypatch):
    """One rule: the distribution's version, or the loaded module's when it only adds a build label."""
    installed = metadata.version("torch")
    monkeypatch.setattr(torch, "__version__", installed + "+cu999")
    assert provenance.full_version("torch") == installed + "+cu999"
    assert provenance.library_versions()["torch"] == installed + "+cu999"
    monkeypatch.setattr(torch, "__version__", "0.0.1")                  # not the installed one: ignored
    assert provenance.full_version("torch") == installed
    versions = provenance.library_versions(extra=("no-such-distribution-xyz",))
    assert "no-such-distribution-xyz" not in versions and versions["python"].count(".") == 2
    assert versions["diffusers"] == metadata.version("diffusers")


def test_created_is_utc_iso_and_device_name_follows_the_device():
    import re

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", provenance.utc_now())
    assert provenance.device_name("cpu") == "cpu" and provenance.device_name(torch.device("meta")) == "meta"
