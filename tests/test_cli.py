"""The `rglcd` command: help on every command, config show, tiny models."""
import subprocess
import sys

import pytest
import yaml

from rglcd.cli import build_parser, main


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            yield from action.choices.items()


def test_every_command_has_help(capsys):
    stack = [("rglcd", build_parser())]
    seen = 0
    while stack:
        name, parser = stack.pop()
        assert parser.format_help().strip(), name
        for sub_name, sub in _subparsers(parser):
            assert sub.description or sub.format_usage(), sub_name
            stack.append((f"{name} {sub_name}", sub))
            seen += 1
    assert seen >= 4


def test_config_show_applies_preset_and_overrides(capsys):
    assert main(["config", "show", "--preset", "sd21-768-hpsv21", "--set", "train.max_steps=5"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["model"]["resolution"] == 768 and data["train"]["max_steps"] == 5


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
