"""Config: presets round-trip, overrides apply, every class of bad value is refused clearly."""
import json

import pytest

from rglcd.config import Config, ConfigError, config_from_dict, dump_config, explain, list_presets, load_config

PRESETS = ["tiny", "tiny-random", "sd21-base-hpsv21", "sd21-base-hpsv21-lrm", "sd21-768-hpsv21", "sd15-hpsv21"]


def test_presets_ship_with_the_package():
    assert set(PRESETS) <= set(list_presets())


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_every_preset_round_trips(preset, fmt, tmp_path):
    cfg = load_config(preset)
    path = tmp_path / f"cfg.{fmt}"
    path.write_text(dump_config(cfg, fmt))
    again = load_config(path=path)
    assert again == cfg
    assert dump_config(again, fmt) == dump_config(cfg, fmt)


def test_preset_values_follow_method_md():
    cfg = load_config("sd21-base-hpsv21")
    assert (cfg.distill.w_min, cfg.distill.w_max, cfg.distill.num_ddim_timesteps) == (5.0, 15.0, 50)
    assert (cfg.distill.sigma_data, cfg.distill.timestep_scaling, cfg.distill.huber_c) == (0.5, 10.0, 0.001)
    assert (cfg.distill.ema_decay, cfg.train.lr, cfg.train.max_grad_norm, cfg.reward.beta) == (0.95, 1e-6, 1.0, 1.0)
    assert cfg.model.time_cond_proj_dim == 256 and cfg.lrm.lr == 3.3e-6
    assert load_config("sd21-768-hpsv21").model.resolution == 768


def test_overrides_parse_yaml_scalars_and_lists():
    cfg = load_config("tiny-random", overrides=["train.lr=2e-6", "train.gradient_checkpointing=true",
                                          "eval.steps=[1, 4]", "pipeline.node_selector={pool: gpu}"])
    assert cfg.train.lr == 2e-6 and cfg.train.gradient_checkpointing is True
    assert cfg.eval.steps == [1, 4] and cfg.pipeline.node_selector == {"pool": "gpu"}


def test_file_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny-random\ntrain:\n  max_steps: 7\n")
    cfg = load_config(path=path, overrides=["train.batch_size=3"])
    assert cfg.preset == "tiny-random" and cfg.train.max_steps == 7 and cfg.train.batch_size == 3
    assert cfg.model.teacher == "tiny:epsilon"


@pytest.mark.parametrize("override, words", [
    ("train.lr=-1", ["train.lr", "-1", "> 0"]),
    ("distill.w_min=20", ["distill.w_min", "20", "w_min <= w_max"]),
    ("model.resolution=500", ["model.resolution", "500", "multiple of 8"]),
    ("model.resolution=0", ["model.resolution", "0", "> 0"]),
    ("model.colour=red", ["model.colour", "unknown key", "teacher"]),
    ("nosuchsection.x=1", ["nosuchsection", "unknown key", "distill"]),
    ("train.max_steps=abc", ["train.max_steps", "abc", "int"]),
    ("train.max_steps=1.5", ["train.max_steps", "1.5", "int"]),
    ("train.gradient_checkpointing=3", ["gradient_checkpointing", "3", "bool"]),
    ("reward.name=aesthetics", ["reward.name", "aesthetics", "hpsv2.1"]),
    ("distill.loss=l1", ["distill.loss", "l1", "huber"]),
    ("distill.ema_decay=1.5", ["distill.ema_decay", "1.5", "<= 1"]),
    ("distill.num_ddim_timesteps=30", ["num_ddim_timesteps", "30", "divisor of 1000"]),
    ("eval.steps=[0, 4]", ["eval.steps", "0", "1..50"]),
    ("train.mixed_precision=fp8", ["train.mixed_precision", "fp8", "bf16"]),
])
def test_bad_values_are_refused_with_key_value_and_allowed(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("tiny-random", overrides=[override])
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_yaml_bare_no_reaches_a_literal_field_as_the_word(tmp_path):
    """YAML 1.1 reads `no` as False; `--set train.mixed_precision=no` and a file's `mixed_precision: no` still mean "no"."""
    assert load_config("tiny-random", overrides=["train.mixed_precision=no"]).train.mixed_precision == "no"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert load_config(path=path).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision: True is not allowed"):
        load_config("tiny-random", overrides=["train.mixed_precision=yes"])


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="sd99.*allowed: .*tiny"):
        load_config("sd99")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(path=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path=bad)
    with pytest.raises(ConfigError, match="must look like"):
        load_config("tiny-random", overrides=["train.lr"])


def test_json_parameter_form_round_trips():
    cfg = load_config("sd21-base-hpsv21-lrm")
    assert config_from_dict(json.loads(dump_config(cfg, "json"))) == cfg
    assert config_from_dict({}) == Config()


def test_parsed_data_loads_like_the_same_file(tmp_path):
    """load_config(data=...) is load_config(path=...) without the file: same merge, validation and errors."""
    data = {"preset": "tiny-random", "train": {"max_steps": 7}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    cfg = load_config(data=data, overrides=["train.batch_size=3"])
    assert cfg == load_config(path=path, overrides=["train.batch_size=3"])
    assert (cfg.preset, cfg.train.max_steps, cfg.train.batch_size) == ("tiny-random", 7, 3)
    assert data == {"preset": "tiny-random", "train": {"max_steps": 7}}            # the caller's mapping is not changed
    assert load_config("sd21-768-hpsv21", data={"train": {"lr": 2e-5}}).model.resolution == 768
    with pytest.raises(ConfigError, match="train.lrr"):
        load_config(data={"train": {"lrr": 1}})
    with pytest.raises(ConfigError, match="config data must hold a mapping of sections, got list"):
        load_config(data=[1, 2])
    with pytest.raises(ValueError, match="not both"):
        load_config(path=path, data=data)


def test_explain_lists_exactly_the_settable_keys_with_their_type_and_help(capsys):
    """Every row of `rglcd config explain` is a key `--set` accepts (with its default, re-set), typed as the
    schema types it, with a help sentence; a key outside the list is refused."""
    from rglcd.cli import main
    from rglcd.config.fields import to_dict

    rows = explain()
    assert len(rows) > 80 and len({key for key, _, _ in rows}) == len(rows)
    assert all(help_text for _, _, help_text in rows), [k for k, _, h in rows if not h]
    defaults = to_dict(Config())
    for key, _, _ in rows:
        section, _, name = key.partition(".")
        value = defaults[section][name] if name else defaults[section]
        assert load_config(overrides=[f"{key}={json.dumps(value)}"]) == Config(), key
    types = {key: typ for key, typ, _ in rows}
    assert (types["train.max_steps"], types["distill.w_min"], types["model.teacher"]) == ("int", "float", "str")
    with pytest.raises(ConfigError, match="train.not_a_key"):
        load_config(overrides=["train.not_a_key=1"])
    assert main(["config", "explain"]) == 0
    out = capsys.readouterr().out.splitlines()
    notes = [line for line in out if line.startswith("#")]
    printed = {line.split()[0]: line for line in out if not line.startswith("#")}
    assert set(printed) == set(types) and all(f"[{typ}]" in printed[key] for key, typ in types.items())
    # the header says where values come from, in order, and how environment variables name keys
    assert "preset < --config file < RGLCD_<SECTION>__<KEY> environment variables < --set" in notes[0]
    assert "RGLCD_STORAGE__REMOTE=s3://bucket/dvc sets storage.remote" in notes[1]


# ---------------------------------------------------------------- --preset / --config / --set (rglcd.config.args)

def _from_cli(*argv: str, default_preset: str | None = None):
    import argparse

    from rglcd.config.args import add_config_args, config_from_args

    parser = argparse.ArgumentParser()
    add_config_args(parser, **({"default_preset": default_preset} if default_preset else {}))
    return config_from_args(parser.parse_args(list(argv)))


def test_an_explicit_preset_is_applied_under_a_file_without_a_preset_key(tmp_path):
    """The preset bug: `--preset tiny-random --config f.yaml` used to load the sd21-base-hpsv21 defaults instead."""
    path = tmp_path / "f.yaml"
    path.write_text("train: {max_steps: 7}\n")
    cfg = _from_cli("--preset", "tiny-random", "--config", str(path))
    assert (cfg.preset, cfg.model.teacher, cfg.model.resolution, cfg.train.max_steps) == ("tiny-random", "tiny:epsilon", 32, 7)


def test_preset_then_file_then_set_and_which_preset(tmp_path, monkeypatch):
    plain, named = tmp_path / "plain.yaml", tmp_path / "named.yaml"
    plain.write_text("train: {max_steps: 7}\n")
    named.write_text("preset: sd21-768-hpsv21\ntrain: {max_steps: 7}\n")
    # no --preset, no preset key, no $RGLCD_PRESET: the command's default preset
    monkeypatch.delenv("RGLCD_PRESET", raising=False)
    assert (_from_cli("--config", str(plain), default_preset="sd15-hpsv21").preset,
            _from_cli(default_preset="sd15-hpsv21").preset) == ("sd15-hpsv21", "sd15-hpsv21")
    # the file's preset key, unless --preset says otherwise
    assert _from_cli("--config", str(named)).model.resolution == 768
    cfg = _from_cli("--preset", "sd15-hpsv21", "--config", str(named), "--set", "train.max_steps=9")
    assert (cfg.preset, cfg.model.teacher, cfg.train.max_steps) == ("sd15-hpsv21", "stable-diffusion-v1-5/stable-diffusion-v1-5", 9)
    # custom: the schema defaults, no preset
    assert _from_cli("--preset", "custom", "--config", str(plain)).model == Config().model


def test_the_default_preset_is_stated_in_the_help():
    import argparse

    from rglcd.config.args import DEFAULT_PRESET, add_config_args

    parser = argparse.ArgumentParser()
    add_config_args(parser, default_preset="sd21-base-hpsv21")
    text = " ".join(parser.format_help().split())
    assert "default: the config file's `preset` key, else $RGLCD_PRESET, else sd21-base-hpsv21" in text
    assert parser.parse_args([]).default_preset == "sd21-base-hpsv21" and DEFAULT_PRESET == "tiny"


def test_environment_variables_go_between_the_file_and_set(tmp_path, monkeypatch):
    """A cluster's mounted settings: RGLCD_<SECTION>__<KEY> over the config file, under --set; values are YAML."""
    path = tmp_path / "cluster.yaml"
    path.write_text("storage: {remote: s3://from-file/dvc}\ntrain: {max_steps: 7}\n")
    monkeypatch.setenv("RGLCD_STORAGE__REMOTE", "s3://from-env/dvc")
    monkeypatch.setenv("RGLCD_REGISTRY__TRACKING_URI", "http://mlflow.mlflow:5000")
    monkeypatch.setenv("RGLCD_TRAIN__MAX_STEPS", "11")
    monkeypatch.setenv("RGLCD_PIPELINE__NODE_SELECTOR", "{pool: h200}")
    monkeypatch.setenv("RGLCD_WEIGHTS_CACHE", "/not/config")           # no double underscore: not a config key
    cfg = _from_cli("--config", str(path), "--set", "train.max_steps=13")
    assert (cfg.storage.remote, cfg.registry.tracking_uri, cfg.train.max_steps) == \
        ("s3://from-env/dvc", "http://mlflow.mlflow:5000", 13)
    assert cfg.pipeline.node_selector == {"pool": "h200"}
    assert load_config("tiny-random").storage.remote == "./.rglcd/remote"      # load_config reads no environment by itself
    monkeypatch.setenv("RGLCD_STORAGE__REMOTEE", "x")
    with pytest.raises(ConfigError, match="environment variable RGLCD_STORAGE__REMOTEE: 'storage.remotee' is not a "
                                          "config key"):
        _from_cli()
    monkeypatch.delenv("RGLCD_STORAGE__REMOTEE")
    monkeypatch.setenv("RGLCD_TRAIN__MAX_STEPS", "-1")
    with pytest.raises(ConfigError, match="train.max_steps"):
        _from_cli()


@pytest.mark.parametrize("override, words", [
    ("eval.gate_reward=toy", ["eval.gate_reward", "'toy'", "eval.rewards", "['hpsv2.1']"]),
    ("eval.gate_reward=lrm", ["eval.gate_reward", "lrm", "allowed", "hpsv2.1", "toy"]),      # a latent reward
    ("eval.rewards=[toy]", ["eval.gate_reward", "'hpsv2.1'", "eval.rewards", "['toy']"]),
    ("eval.hps_benchmark=hub", ["eval.hps_benchmark", "'hub'", "eval.rewards", "null"]),
])
def test_gate_reward_must_be_an_evaluated_image_reward(override, words):
    """eval.gate_reward: a registered image reward among eval.rewards; the HPSv2 benchmark needs HPSv2.1 scored."""
    base = ["eval.rewards=[toy]", "eval.gate_reward=toy"] if override.startswith("eval.hps_benchmark") else []
    with pytest.raises(ConfigError) as err:
        load_config("tiny-random", overrides=[*base, override])
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_gate_reward_other_than_hps_loads():
    cfg = load_config("tiny-random", overrides=["eval.rewards=[toy, clipscore]", "eval.gate_reward=toy",
                                                "eval.gate_min_reward_margin=0.02"])
    assert (cfg.eval.gate_reward, cfg.eval.gate_min_reward_margin) == ("toy", 0.02)
    toy = load_config("tiny").eval                                      # the toy world gates on its own expert
    assert (toy.gate_reward, toy.rewards, toy.hps_benchmark) == ("toy", ["toy"], None)
    assert Config().eval.gate_reward == "hpsv2.1" and Config().eval.gate_min_reward_margin == 0.0
    keys = {key for key, _, _ in explain()}
    assert {"eval.gate_reward", "eval.gate_min_reward_margin"} <= keys and "eval.gate_min_hps_margin" not in keys


def test_renamed_key_fails_with_its_new_name(tmp_path, monkeypatch):
    """eval.gate_min_hps_margin (before the gate compared any reward) is refused from every source, naming
    eval.gate_min_reward_margin."""
    message = ("eval.gate_min_hps_margin: -5.0 uses a key that was renamed to eval.gate_min_reward_margin; "
               "allowed: eval.gate_min_reward_margin")
    with pytest.raises(ConfigError, match=message):
        load_config("tiny-random", overrides=["eval.gate_min_hps_margin=-5.0"])
    path = tmp_path / "old.yaml"
    path.write_text("preset: tiny-random\neval:\n  gate_min_hps_margin: -5.0\n")
    with pytest.raises(ConfigError, match=f"{message}.*config file"):
        load_config(path=path)
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"eval": {"gate_min_hps_margin": -5.0}})
    with pytest.raises(ConfigError, match="environment variable RGLCD_EVAL__GATE_MIN_HPS_MARGIN: "
                       "'eval.gate_min_hps_margin' was renamed to 'eval.gate_min_reward_margin'; allowed: "
                       "RGLCD_EVAL__GATE_MIN_REWARD_MARGIN"):
        load_config("tiny-random", env={"RGLCD_EVAL__GATE_MIN_HPS_MARGIN": "-5"})


def test_rglcd_preset_comes_after_the_flag_and_the_file_and_before_the_default(tmp_path, monkeypatch):
    """--preset, else the file's `preset:` key, else $RGLCD_PRESET, else the command's default preset."""
    plain, named = tmp_path / "plain.yaml", tmp_path / "named.yaml"
    plain.write_text("train: {max_steps: 7}\n")
    named.write_text("preset: sd21-768-hpsv21\n")
    monkeypatch.setenv("RGLCD_PRESET", "sd15-hpsv21")
    cli = lambda *argv: _from_cli(*argv, default_preset="sd21-base-hpsv21")     # noqa: E731
    cfg = cli("--config", str(plain))
    assert (cfg.preset, cfg.model.teacher, cfg.train.max_steps) == (
        "sd15-hpsv21", "stable-diffusion-v1-5/stable-diffusion-v1-5", 7)
    assert cli().preset == "sd15-hpsv21"
    assert (cli("--config", str(named)).preset, cli("--config", str(named)).model.resolution) == ("sd21-768-hpsv21", 768)
    assert cli("--preset", "sd21-base-hpsv21-lrm", "--config", str(named)).preset == "sd21-base-hpsv21-lrm"
    assert cli("--preset", "custom").model == Config().model
    monkeypatch.setenv("RGLCD_PRESET", "custom")                          # custom: the schema defaults
    assert (cli().preset, cli().model) == ("custom", Config().model)
    monkeypatch.setenv("RGLCD_PRESET", " ")                               # empty: unset
    assert cli().preset == "sd21-base-hpsv21"


@pytest.mark.parametrize("argv", [(), ("--preset", "sd15-hpsv21")])
def test_a_bad_rglcd_preset_fails_naming_the_variable_the_value_and_the_presets(argv, monkeypatch, capsys):
    """Checked even when --preset wins, so a mistyped cluster setting fails on the first command."""
    from rglcd.cli import main

    monkeypatch.setenv("RGLCD_PRESET", "tiny_random")
    with pytest.raises(ConfigError, match=r"environment variable RGLCD_PRESET: 'tiny_random' is not a known preset; "
                                          r"allowed: .*sd15-hpsv21.*, tiny, tiny-random, custom$"):
        _from_cli(*argv)
    assert main(["config", "show", *argv]) == 2
    assert "config error: environment variable RGLCD_PRESET: 'tiny_random'" in capsys.readouterr().err


def test_the_tiny_random_preset_is_random_init_and_the_suites_default():
    """tiny-random: the tiny random-init teacher and experts, no downloads. The suite (tests/conftest.py) sets
    RGLCD_PRESET=tiny-random, so a command without --preset, in this process or a child, runs on it."""
    import os
    import subprocess
    import sys

    cfg = load_config("tiny-random")
    assert (cfg.model.teacher, cfg.model.resolution, cfg.reward.weights) == ("tiny:epsilon", 32, "tiny")
    assert (cfg.eval.clip_model, cfg.eval.reward_weights, cfg.eval.hps_benchmark) == ("tiny", {"hpsv2.1": "tiny"}, None)
    assert os.environ["RGLCD_PRESET"] == "tiny-random"
    assert (_from_cli().preset, _from_cli().model.teacher) == ("tiny-random", "tiny:epsilon")
    child = subprocess.run([sys.executable, "-m", "rglcd", "config", "show", "--format", "json"], capture_output=True,
                           text=True, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert (json.loads(child.stdout)["preset"], json.loads(child.stdout)["model"]["teacher"]) == ("tiny-random", "tiny:epsilon")
