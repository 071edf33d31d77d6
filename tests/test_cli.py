"""The `rglcd` command: help on every command, config show, tiny models."""
import json
import subprocess
import sys

import pytest
import yaml

from rglcd.cli import build_parser, main


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            yield from action.choices.items()


def test_every_command_is_listed_with_help_and_runs_a_handler(capsys):
    """Each command appears in its parent's --help with its own help sentence, its own --help exits 0 and
    names it, and each leaf command dispatches to a handler (a command without one would do nothing)."""
    stack, leaves = [(("rglcd",), build_parser())], []
    while stack:
        path, parser = stack.pop()
        subs = list(_subparsers(parser))
        listing = {a.dest: a.help for act in parser._actions if act.__class__.__name__ == "_SubParsersAction"
                   for a in act._choices_actions}
        for sub_name, sub in subs:
            assert listing.get(sub_name), f"{' '.join(path)} {sub_name}: no help sentence in the parent's list"
            assert sub_name in parser.format_help()
            stack.append(((*path, sub_name), sub))
        if not subs:
            leaves.append(path)
            assert callable(parser.get_default("func")), f"{' '.join(path)} has no handler"
    assert {"train", "evaluate", "prep"} <= {p[1] for p in leaves} and len(leaves) >= 15
    for path in leaves:
        with pytest.raises(SystemExit) as exit_:
            main([*path[1:], "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: {' '.join(path)}")


def test_config_show_applies_preset_and_overrides(capsys):
    assert main(["config", "show", "--preset", "sd21-768-hpsv21", "--set", "train.max_steps=5"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["model"]["resolution"] == 768 and data["train"]["max_steps"] == 5


def test_config_show_applies_an_explicit_preset_under_a_file(capsys, tmp_path):
    """`--preset tiny-random --config f.yaml` (f.yaml without a preset key) is tiny-random + f.yaml, not the SD 2.1 defaults."""
    path = tmp_path / "f.yaml"
    path.write_text("train: {max_steps: 7}\n")
    assert main(["config", "show", "--preset", "tiny-random", "--config", str(path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["preset"], data["model"]["teacher"], data["train"]["max_steps"]) == ("tiny-random", "tiny:epsilon", 7)


def test_config_error_exits_2_with_message(capsys):
    assert main(["config", "show", "--set", "distill.w_min=99"]) == 2
    assert "distill.w_min" in capsys.readouterr().err


def test_models_tiny_via_console_script(tmp_path):
    out = tmp_path / "tiny"
    proc = subprocess.run([sys.executable, "-m", "rglcd", "models", "tiny", "--out", str(out),
                           "--prediction-type", "v_prediction"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert '"v_prediction"' in (out / "scheduler" / "scheduler_config.json").read_text()


def test_mapping_files_named_by_flags_read_json_and_yaml_and_refuse_the_rest(tmp_path):
    from rglcd.cli._common import read_mapping_file

    (tmp_path / "m.json").write_text('{"fid": 12.5}')
    (tmp_path / "m.yaml").write_text("fid: 12.5\nhps: {mean: 30}\n")
    assert read_mapping_file(str(tmp_path / "m.json"), "--metrics") == {"fid": 12.5}
    assert read_mapping_file(str(tmp_path / "m.yaml"), "--metrics") == {"fid": 12.5, "hps": {"mean": 30}}
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "broken.json").write_text('{"fid": ')
    for name, error, words in [("missing.json", FileNotFoundError, "does not exist"),
                               ("list.json", ValueError, "must hold a mapping"),
                               ("broken.json", ValueError, "is not valid JSON")]:
        with pytest.raises(error, match=rf"^--production-metrics: '.*{name}' {words}"):
            read_mapping_file(str(tmp_path / name), "--production-metrics")


# ---------------------------------------------------------------- --version, --device, --json

def test_version_is_the_installed_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"rglcd {version('rglcd')}\n"


def _commands_with(flag: str) -> dict[str, object]:
    """'command action' -> the default of `flag` on every (sub)command that has it."""
    found, stack = {}, [("", build_parser())]
    while stack:
        name, parser = stack.pop()
        for action in parser._actions:
            if flag in action.option_strings:
                found[name.strip()] = action.default
        stack += [(f"{name} {sub_name}", sub) for sub_name, sub in _subparsers(parser)]
    return found


def test_one_device_convention():
    import torch

    from rglcd.devices import resolve_device

    # auto everywhere; evaluate defaults to the config's eval.device (itself auto); the toy table is CPU-defined
    assert _commands_with("--device") == {"sample": "auto", "pretrain-lrm": "auto", "evaluate": None, "toy run": "cpu"}
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device: 'tpu' is not a device; allowed: auto, cpu, cuda, cuda:N"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="--device: 'meta' is not allowed; allowed: auto, cpu, cuda, cuda:N"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="eval.device: 'cuda:1' but no CUDA device is visible"):
            resolve_device("cuda:1", "eval.device")


def test_every_command_that_prints_results_has_json():
    assert {"pipeline run", "pipeline submit", "pipeline schedule", "evaluate", "push", "pull", "register",
            "models list"} <= set(_commands_with("--json"))


def test_json_mode_keeps_stdout_for_the_one_object(monkeypatch, capfd, tmp_path):
    """Prints of the command and of its child processes land on stderr; stdout parses as JSON."""
    import pipelines.local

    def run_local(cfg, workdir, cache, force):
        print("a step log line")
        subprocess.run([sys.executable, "-c", "print('a child process line')"], check=True)
        return pipelines.local.LocalRun(tmp_path, "sqlite:///m.db", {"register-model": {"parameters": {"version": 3}}})
    monkeypatch.setattr(pipelines.local, "run_local", run_local)
    assert main(["pipeline", "run", "--local", "--workdir", str(tmp_path), "--json"]) == 0
    out = capfd.readouterr()
    assert json.loads(out.out) == {"run_dir": str(tmp_path), "tracking_uri": "sqlite:///m.db",
                                   "registered": {"version": 3}, "skipped": False,
                                   "tasks": {"register-model": {"parameters": {"version": 3}}}}
    assert "a step log line" in out.err and "a child process line" in out.err
    print("stdout works again")
    assert capfd.readouterr().out == "stdout works again\n"


def test_evaluate_json_and_device(monkeypatch, capfd, tmp_path):
    import rglcd.evaluate
    from rglcd.evaluate.core import EvalResult
    from rglcd.evaluate.gate import GateDecision

    seen = {}

    def evaluate(cfg, model, out, teacher=None, production_metrics=None):
        seen.update(device=cfg.eval.device, model=model)
        print("scoring ...")
        gate = GateDecision(False, ["reward_margin"], {"reward_margin": "FAIL: toy 0.2000 - teacher 0.2500 = -0.0500 "
                                                                        "< +0.0000"}, reward="toy")
        return EvalResult({"summary": {"reward": 0.2, "fid": 31.5}}, tmp_path / "metrics.json", tmp_path / "r.html",
                          gate)
    monkeypatch.setattr(rglcd.evaluate, "evaluate", evaluate)
    argv = ["evaluate", "--model", "m", "--out", str(tmp_path), "--device", "cpu", "--strict"]
    assert main([*argv, "--json"]) == 3                                  # the gate failed: --strict exit status
    out = capfd.readouterr()
    assert json.loads(out.out) == {"summary": {"reward": 0.2, "fid": 31.5},
                                   "gate": {"passed": False, "failed_rules": ["reward_margin"], "reward": "toy",
                                            "reasons": {"reward_margin": "FAIL: toy 0.2000 - teacher 0.2500 = "
                                                                         "-0.0500 < +0.0000"}},
                                   "metrics": str(tmp_path / "metrics.json"), "report": str(tmp_path / "r.html")}
    assert seen == {"device": "cpu", "model": "m"} and "scoring ..." in out.err
    assert main(argv) == 3
    text = capfd.readouterr().out
    assert "gate: FAILED (reward: toy)" in text and "scoring ..." in text
    assert "  reward_margin: FAIL: toy 0.2000 - teacher 0.2500 = -0.0500 < +0.0000" in text
