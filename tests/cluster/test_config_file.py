"""`emu35 serve --config FILE`: the YAML file sets everything the flags set, flags override it,
mistakes end in one line naming the field; deployment options per stage (no cluster here)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.xdist_group("ray")  # its slow tests start Ray: one cluster at a time

from cluster.cli import build_parser, main
from cluster.placement import StageScaling, deployment_options
from cluster.serve_cmd import config_from_args
from services.model.tiny import write_tiny_checkpoint
from services.settings import EngineSettings
from services.stages.settings import StageSettings

FULL = {
    "model": {"path": "ckpt/llm", "vision_tokenizer": "ckpt/vision_tokenizer", "device": "cpu"},
    "server": {"host": "0.0.0.0", "grpc_port": 9100, "http_port": 8100},
    "storage": {"backend": "s3", "bucket": "emu35-results", "endpoint_url": "http://s3.local:8333",
                "region": "eu-west-1", "prefix": "runs/"},
    "engine": {"kv_blocks": 512, "max_waiting": 7, "max_num_seqs": 16, "max_batched_tokens": 1024},
    "stages": {"generator": {"min_replicas": 2, "max_replicas": 4, "target_ongoing_requests": 3,
                             "num_cpus": 2, "num_gpus": 1},
               "decoder": {"num_cpus": 0.5, "num_gpus": 0.25}},
}


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg")
    write_tiny_checkpoint(root / "ckpt")
    return root


def _config(ckpt_dir, data: dict, *flags: str):
    path = ckpt_dir / "emu35.yaml"
    path.write_text(yaml.safe_dump(data))
    return config_from_args(build_parser().parse_args(["serve", "--config", str(path), *flags]))


def test_the_file_sets_every_setting(ckpt_dir):
    cfg = _config(ckpt_dir, FULL)
    st = cfg.stages
    assert st.model == str(ckpt_dir / "ckpt" / "llm")  # relative to the file's directory
    assert (cfg.host, cfg.grpc_port, cfg.http_port) == ("0.0.0.0", 9100, 8100)
    assert (st.storage.backend, st.storage.bucket, st.storage.endpoint_url, st.storage.region,
            st.storage.prefix) == ("s3", "emu35-results", "http://s3.local:8333", "eu-west-1", "runs")
    assert (st.kv_blocks, st.max_waiting, st.max_num_seqs, st.max_batched_tokens) == (512, 7, 16, 1024)
    assert cfg.scaling["generator"] == StageScaling(2, 4, 3.0, 64, 2.0, 1.0)
    assert cfg.scaling["decoder"] == StageScaling(1, 1, 8.0, 8, 0.5, 0.25)  # unset: the stage's defaults
    assert cfg.scaling["gateway"].num_cpus == 0.25


def test_flags_override_the_file(ckpt_dir, tmp_path):
    tiny = tmp_path / "tiny"
    cfg = _config(ckpt_dir, FULL, "--tiny", str(tiny), "--grpc-port", "9200", "--kv-blocks", "64",
                  "--generator-replicas", "3", "--storage", "local", "--storage-root",
                  str(tmp_path / "res"), "--host", "127.0.0.1")
    assert cfg.stages.model == str(tiny / "llm")  # --tiny replaces the file's model.path
    assert (cfg.grpc_port, cfg.http_port, cfg.stages.kv_blocks) == (9200, 8100, 64)
    assert (cfg.scaling["generator"].min_replicas, cfg.scaling["generator"].max_replicas) == (3, 3)
    assert cfg.stages.storage.backend == "local"
    assert cfg.stages.max_waiting == 7  # not given as a flag: the file's


@pytest.mark.parametrize("change, message", [
    ({"stages": {"generator": {"min_replicas": 3, "max_replicas": 2}}},
     "stages.generator.max_replicas: 2 is below min_replicas 3"),
    ({"stages": {"genrator": {}}}, "stages.genrator: unknown field"),
    ({"engine": {"kv_blocks": 0}}, "engine.kv_blocks: must be auto or a positive whole number"),
    ({"server": {"grpc_port": "nine"}}, "server.grpc_port: Input should be a valid integer"),
    ({"storage": {"backend": "s3"}}, "storage.bucket: required with backend s3"),
    ({"storage": {"backend": "s3", "bucket": "b3x", "secret_key": "x"}},
     "storage.secret_key: credentials are read from the environment"),
    ({"model": {"path": "ckpt/llm"}}, "model.vision_tokenizer: required with model.path"),
    ({"model": {"vision_tokenizer": "x"}}, "model.path: give exactly one of model.path"),
    ({"model": {"path": "nope", "vision_tokenizer": "x"}}, "model.path (--model): "),
    ({"engine": {"tensor_parallel_size": 2}},
     "stages.generator.num_gpus: leave unset with engine.tensor_parallel_size > 1"),
    ({"engine": {"tensor_parallel_size": 2}, "stages": {"generator": {"num_cpus": 1}}},
     "engine.tensor_parallel_size: 2 GPUs per generator replica requested, but the engine runs "
     "on one device"),
])
def test_mistakes_end_in_one_line_naming_the_field(ckpt_dir, capsys, change, message):
    data = {**FULL, "storage": {"backend": "local"}}
    for section, values in change.items():
        data[section] = values if section in ("model", "storage") else {**data.get(section, {}),
                                                                        **values}
    path = ckpt_dir / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--config", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("emu35: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_command_prints_one_line_not_a_traceback(tmp_path):
    """As a process (`python -m cluster.cli`, how the end-to-end tests start it)."""
    path = tmp_path / "c.yaml"
    path.write_text("model: {tiny: t}\nengine: {max_waiting: 0}\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "cluster.cli", "serve", "--config", str(path)],
                          capture_output=True, text=True, cwd=root, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr == ("emu35: error: engine.max_waiting: Input should be greater than or "
                           "equal to 1\n"), done.stderr


@pytest.mark.parametrize("text, message", [
    ("model: [unclosed", "is not valid YAML"),
    ("- a list\n", "must hold a mapping of sections"),
])
def test_unreadable_files(tmp_path, capsys, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit):
        main(["serve", "--config", str(path)])
    assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--config", str(tmp_path / "missing.yaml")])
    assert "--config: file not found" in capsys.readouterr().err


def test_deployment_options_per_stage():
    fixed = deployment_options("decoder", StageScaling(2, 2, num_cpus=0.5, num_gpus=0.25))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.25}
    auto = deployment_options("generator", StageScaling(1, 4, 6.0, num_gpus=1.0))
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4,
                                          "target_ongoing_requests": 6.0}
    assert auto["ray_actor_options"]["num_gpus"] == 1.0 and "placement_group_bundles" not in auto
    tp = deployment_options("generator", StageScaling(num_cpus=1.0), tensor_parallel_size=4)
    assert tp["placement_group_bundles"] == [{"CPU": 1.0}] + [{"GPU": 1.0}] * 4
    assert tp["placement_group_strategy"] == "STRICT_PACK"
    assert tp["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0}  # fits bundle 0
    # only the generator is tensor-parallel
    assert "placement_group_bundles" not in deployment_options("encoder", StageScaling(), 4)


def test_the_real_generator_refuses_tensor_parallel_before_loading(ckpt_dir):
    from services.stages.deployments import GeneratorStage

    settings = StageSettings(model="/nonexistent", vision_tokenizer="/nonexistent",
                             engine=EngineSettings(tensor_parallel_size=2))
    with pytest.raises(ValueError, match="tensor_parallel_size: 2 GPUs per generator replica"):
        GeneratorStage.func_or_class(settings)


# ---- one settings model: file, environment, flags ---------------------------------------------

def _settings(ckpt_dir, data: dict | None, env: dict, *flags: str):
    from cluster.serve_cmd import settings_from_args

    argv = ["serve", *flags]
    if data is not None:
        path = ckpt_dir / "layers.yaml"
        path.write_text(yaml.safe_dump(data))
        argv += ["--config", str(path)]
    return settings_from_args(build_parser().parse_args(argv), environ=env)


def test_file_environment_and_flag_set_the_same_field_flag_winning(ckpt_dir):
    """One field, three sources: flag > environment > file > default (defined once)."""
    from services.settings import EngineSettings

    file = {"model": {"tiny": "t"}, "engine": {"max_waiting": 5, "kv_blocks": 100}}
    env = {"EMU35_ENGINE__MAX_WAITING": "6", "EMU35_ENGINE__KV_BLOCKS": "200"}
    flag = ("--max-waiting", "7", "--kv-blocks", "300")
    both = _settings(ckpt_dir, file, env, *flag).engine
    assert (both.max_waiting, both.kv_blocks) == (7, 300)
    assert _settings(ckpt_dir, file, env).engine.max_waiting == 6
    assert _settings(ckpt_dir, file, {}).engine.kv_blocks == 100
    default = _settings(ckpt_dir, None, {"EMU35_MODEL__TINY": "t"}).engine
    assert default == EngineSettings() and default.kv_blocks == "auto"
    assert StageSettings(model="m", vision_tokenizer="v").kv_blocks is None  # auto: the engine sizes


def test_every_section_is_settable_from_the_environment(ckpt_dir):
    env = {"EMU35_LIMITS__MAX_IMAGES": "1", "EMU35_RAY__NUM_CPUS": "4",
           "EMU35_RAY__OBJECT_STORE_MEMORY": str(256 << 20), "EMU35_STORAGE__MAX_ATTEMPTS": "9",
           "EMU35_STORAGE__PRESIGN_EXPIRY_S": "60", "EMU35_STAGES__DECODER__NUM_GPUS": "0.5",
           "EMU35_SERVER__GRPC_PORT": "9300", "EMU35_ENGINE__KV_BLOCKS": "auto",
           "EMU35_MODEL__TINY": str(ckpt_dir / "ckpt-env")}
    args = build_parser().parse_args(["serve", "--storage-root", str(ckpt_dir / "res")])
    cfg = config_from_args(args, environ=env)
    assert cfg.stages.limits.max_images == 1 and cfg.ray.num_cpus == 4
    assert cfg.ray.object_store_memory == 256 << 20 and cfg.grpc_port == 9300
    assert (cfg.stages.storage.max_attempts, cfg.stages.storage.presign_expiry_s) == (9, 60)
    assert cfg.scaling["decoder"].num_gpus == 0.5 and cfg.scaling["decoder"].num_cpus == 0.25
    assert cfg.stages.kv_blocks is None and cfg.stages.model == str(ckpt_dir / "ckpt-env" / "llm")
    assert cfg.stages.storage.root == ckpt_dir / "res"


@pytest.mark.parametrize("env, flags, message", [
    ({"EMU35_ENGINE__KV_BLOCK": "5"}, (),
     "EMU35_ENGINE__KV_BLOCK: not a setting (did you mean EMU35_ENGINE__KV_BLOCKS?)"),
    ({"EMU35_STORAGE_BUCKET": "b"}, (),  # the old single-underscore name
     "EMU35_STORAGE_BUCKET: not a setting (did you mean EMU35_STORAGE__BUCKET?)"),
    ({"EMU35_SERVER__GRPC_PORT": "nine"}, (),
     "EMU35_SERVER__GRPC_PORT: Input should be a valid integer"),
    ({"EMU35_ENGINE__KV_BLOCKS": "lots"}, (),
     "EMU35_ENGINE__KV_BLOCKS: must be auto or a positive whole number, not 'lots'"),
    ({"EMU35_ENGINE__KV_BLOCKS": "lots"}, ("--kv-blocks", "0"),  # the flag's value is the bad one
     "--kv-blocks: must be auto or a positive whole number, not '0'"),
    ({}, ("--generator-replicas", "0"), "--generator-replicas: Input should be greater than"),
])
def test_bad_values_are_named_as_given(ckpt_dir, capsys, monkeypatch, env, flags, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--tiny", str(ckpt_dir / "t"), *flags])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err == f"emu35: error: {err[14:]}" and message in err, err
    assert err.count("\n") == 1


def test_other_emu35_variables_are_not_mistaken_for_settings(ckpt_dir):
    env = {"EMU35_TRACE_FILE": "/tmp/x", "EMU35_ATTENTION": "reference", "EMU35_MY_SCRIPT": "1",
           "EMU35_MODEL__TINY": "t"}
    assert _settings(ckpt_dir, None, env).model.tiny == "t"


def test_the_settings_table_is_current_and_lists_every_variable():
    from services.settings.sources import OTHER_VARIABLES, env_name, setting_paths, settings_table

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "settings.md").read_text()
    assert doc == settings_table(), "regenerate: python -m services.settings --write"
    for name in [env_name(p) for p in setting_paths()] + list(OTHER_VARIABLES):
        assert f"`{name}`" in doc
    assert "docs/settings.md" in (root / "README.md").read_text()


def test_the_readme_example_file_is_valid():
    import re

    from services.settings.sources import Layer, resolve

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    s = resolve([Layer(yaml.safe_load(block))])
    assert s.engine.kv_blocks == "auto" and s.stages.generator.max_replicas == 4
