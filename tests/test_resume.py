"""Resuming from checkpoints on an untrusted volume: no code runs, corrupt ones are set aside, config changes
are checked and recorded (rglcd.train.checkpoint, rglcd.train.resume, rglcd.train.statefile)."""
from __future__ import annotations

import json
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rglcd.train import list_checkpoints, train
from rglcd.train.checkpoint import CheckpointError, set_rng_state, verify_checkpoint, write_manifest
from rglcd.train.statefile import StateFileError, load_state, save_state

FAST = ["reward.name=none", "reward.guidance=direct", "train.batch_size=2", "train.validation_every=1000",
        "train.max_steps=2", "train.checkpoint_every=1", "data.shuffle_buffer=8", "train.seed=3"]
DATA = "builtin:photos:12"


class Payload:
    """Unpickling this creates the marker file: what a planted pickle would do, made harmless."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant_pickle(file: Path, marker: Path) -> None:
    file.write_bytes(pickle.dumps(Payload(marker)))


def _two_checkpoints(tiny_cfg, *overrides):
    cfg = tiny_cfg(*FAST, *overrides)
    result = train(cfg, DATA)
    assert [s for s, _ in list_checkpoints(result.output_dir)] == [1, 2]
    return cfg, result.output_dir


# ---------------------------------------------------------------- no code runs

def test_a_planted_pickle_is_never_unpickled(tiny_cfg, tmp_path):
    cfg, out = _two_checkpoints(tiny_cfg)
    marker = tmp_path / "PWNED"
    newest = out / "checkpoints" / "step-00000002"
    _plant_pickle(newest / "custom_checkpoint_0.pkl", marker)       # accelerate's name for registered objects
    _plant_pickle(newest / "random_states_0.pkl", marker)
    cfg.train.max_steps = 3
    with pytest.warns(UserWarning, match=r"step-00000002: ignoring files its manifest does not list.*"
                                         r"custom_checkpoint_0.pkl, random_states_0.pkl"):
        result = train(cfg, DATA)
    assert not marker.exists()                                          # ignored by design: never opened
    assert result.resumed_from == newest and result.steps == 3


def test_a_state_file_replaced_by_a_pickle_is_corrupt_and_never_unpickled(tiny_cfg, tmp_path):
    cfg, out = _two_checkpoints(tiny_cfg)
    marker = tmp_path / "PWNED"
    ckpt = out / "checkpoints" / "step-00000002"
    _plant_pickle(ckpt / "rng-0.safetensors", marker)
    with pytest.raises(CheckpointError, match=r"step-00000002/rng-0.safetensors: corrupt \(size or sha256"):
        train(cfg, DATA, resume=str(ckpt))
    write_manifest(ckpt)                                   # an attacker who rewrites the manifest too
    with pytest.raises(CheckpointError, match=r"rng-0.safetensors: not a readable safetensors state file"):
        train(cfg, DATA, resume=str(ckpt))
    torch.save({"x": Payload(marker)}, ckpt / "optimizer.safetensors")   # a torch pickle under our name
    write_manifest(ckpt)
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors: not a readable safetensors state file"):
        train(cfg, DATA, resume=str(ckpt))
    assert not marker.exists()


def test_a_tampered_rng_state_is_an_error_naming_the_file(tmp_path):
    good = tmp_path / "rng-0.safetensors"
    save_state({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}, good)
    first = (torch.rand(3), np.random.rand(), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    set_rng_state(good)                                    # round trip: the same draws follow
    assert torch.equal(torch.rand(3), first[0]) and (np.random.rand(), random.random()) == first[1:]

    bad = tmp_path / "rng-1.safetensors"
    save_state({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.zeros(7, dtype=torch.uint8)}, bad)
    with pytest.raises(CheckpointError, match=r"rng-1.safetensors: not a valid RNG state"):
        set_rng_state(bad)
    save_state({"python": (3, (1, 2), None), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}, bad)
    with pytest.raises(CheckpointError, match=r"rng-1.safetensors: not a valid RNG state"):
        set_rng_state(bad)
    save_state({"torch": torch.get_rng_state()}, bad)
    with pytest.raises(CheckpointError, match=r"rng-1.safetensors: RNG state holds \[.torch.\], expected"):
        set_rng_state(bad)
    bad.write_bytes(b"\x00" * 40)
    with pytest.raises(StateFileError, match=r"rng-1.safetensors: not a readable safetensors state file"):
        set_rng_state(bad)


def test_state_files_round_trip_exactly_and_reject_unknown_tags(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"opt": opt.state_dict(), "nan": float("nan"), "inf": float("inf"), "tiny": 1e-300,
             "np": np.arange(5, dtype=np.uint32), "t": (1, "a", None)}
    back = load_state(save_state(state, tmp_path / "s.safetensors"))
    assert back["opt"]["param_groups"] == opt.state_dict()["param_groups"]        # tuples (betas) kept
    assert all(torch.equal(back["opt"]["state"][i][k], v) for i, s in opt.state_dict()["state"].items()
               for k, v in s.items())
    assert np.isnan(back["nan"]) and back["inf"] == float("inf") and back["tiny"] == 1e-300
    assert back["np"].dtype == np.uint32 and back["np"].tolist() == [0, 1, 2, 3, 4] and back["t"] == (1, "a", None)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "evil.safetensors"),
              metadata={"rglcd.state": json.dumps({"$exec": "os.system('x')"})})
    with pytest.raises(StateFileError, match=r"evil.safetensors: malformed state \(unknown tagged value"):
        load_state(tmp_path / "evil.safetensors")


# ---------------------------------------------------------------- corrupt checkpoints

def _flip_a_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous(tiny_cfg):
    cfg, out = _two_checkpoints(tiny_cfg)
    _flip_a_byte(out / "checkpoints" / "step-00000002" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"step-00000002/model.safetensors: corrupt"):
        verify_checkpoint(out / "checkpoints" / "step-00000002")
    with pytest.raises(CheckpointError, match=r"step-00000002/model.safetensors: corrupt"):
        train(cfg, DATA, resume=str(out / "checkpoints" / "step-00000002"))   # asked for by name: no fallback
    with pytest.warns(UserWarning, match=r"checkpoint .*step-00000002 is corrupt \(.*step-00000002/model.safetensors:"
                                         r" corrupt.*\); moved to .*corrupt-step-00000002; resuming from step-00000001"):
        result = train(cfg, DATA)
    assert result.resumed_from.name == "step-00000001" and result.steps == 2
    assert (out / "checkpoints" / "corrupt-step-00000002" / "model.safetensors").is_file()   # kept for a look
    assert [s for s, _ in list_checkpoints(out)] == [1, 2]
    verify_checkpoint(out / "checkpoints" / "step-00000002")                  # written anew, intact
    resumes = json.loads((out / "run.json").read_text())["resumes"]
    assert resumes[-1]["skipped"] == ["step-00000002"] and resumes[-1]["step"] == 1


def test_no_intact_checkpoint_stops_with_every_reason(tiny_cfg):
    cfg, out = _two_checkpoints(tiny_cfg)
    (out / "checkpoints" / "step-00000002" / "manifest.json").unlink()
    (out / "checkpoints" / "step-00000001" / "checkpoint.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*step-00000002: .*manifest.json: missing.*"
                                              r"step-00000001: .*checkpoint.json: corrupt"):
        train(cfg, DATA)
    assert [s for s, _ in list_checkpoints(out)] == [1, 2]                   # nothing moved or deleted


# ---------------------------------------------------------------- config changes

def test_a_resume_that_changes_the_run_is_refused_with_the_list(tiny_cfg):
    cfg, out = _two_checkpoints(tiny_cfg)
    before = (out / "config.yaml").read_text()
    changed = tiny_cfg(*FAST, "train.lr=0.5", "train.seed=4", "train.max_steps=3")
    with pytest.raises(ValueError, match=r"would change the run: train.lr: 0.0001 -> 0.5; train.seed: 3 -> 4\. "
                                         r"Allowed on resume"):
        train(changed, DATA)
    with pytest.raises(ValueError, match=r"would change the run: data: 'builtin:photos:12' -> 'builtin:photos:10'"):
        train(tiny_cfg(*FAST, "train.max_steps=3"), "builtin:photos:10")
    with pytest.raises(ValueError, match=r"train.max_steps: 2 -> 1"):
        train(tiny_cfg(*FAST, "train.max_steps=1"), DATA)
    assert (out / "config.yaml").read_text() == before                      # nothing recorded for a refused run
    assert [s for s, _ in list_checkpoints(out)] == [1, 2]


def test_a_resume_that_extends_the_run_is_accepted_and_recorded(tiny_cfg):
    cfg, out = _two_checkpoints(tiny_cfg)
    longer = tiny_cfg(*FAST, "train.max_steps=4", "train.checkpoint_every=2", "eval.batch_size=3")
    result = train(longer, DATA)
    assert result.steps == 4 and result.resumed_from.name == "step-00000002"
    (record,) = json.loads((out / "run.json").read_text())["resumes"]
    assert record["step"] == 2 and record["from"].endswith("step-00000002") and record["skipped"] == []
    assert record["changed"] == {"eval.batch_size": [4, 3], "train.checkpoint_every": [1, 2],
                                 "train.max_steps": [2, 4]}
    saved = json.loads((result.checkpoint / "checkpoint.json").read_text())
    assert saved["state"]["resumes"] == [record] and saved["config"]["train"]["max_steps"] == 4
    assert "max_steps: 4" in (out / "config.yaml").read_text()


def test_cli_resume_auto_refuses_a_new_lr_and_never_runs_a_planted_pickle(tiny_cfg, tmp_path, model_cache, capsys):
    from rglcd.cli import main

    cfg, out = _two_checkpoints(tiny_cfg)
    marker = tmp_path / "PWNED"
    _plant_pickle(out / "checkpoints" / "step-00000002" / "custom_checkpoint_0.pkl", marker)
    base = ["train", "--preset", "tiny-random", "--data", DATA, "--resume", "auto", "--output-dir", str(out),
            "--set", f"model.cache_dir={model_cache}", *[a for o in FAST for a in ("--set", o)]]
    with pytest.warns(UserWarning, match="ignoring files its manifest does not list"):
        assert main([*base, "--set", "train.lr=0.5", "--set", "train.max_steps=3"]) == 1
    err = capsys.readouterr().err
    assert "rglcd train: error: resume from" in err and "train.lr: 0.0001 -> 0.5" in err and "Traceback" not in err
    assert "lr: 0.0001" in (out / "config.yaml").read_text()            # the run's config is untouched
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*base, "--set", "train.max_steps=3"]) == 0
    assert not marker.exists()
    changed = json.loads((out / "run.json").read_text())["resumes"][0]["changed"]
    assert changed["train.max_steps"] == [2, 3] and "storage.remote" in changed      # accepted, and recorded
