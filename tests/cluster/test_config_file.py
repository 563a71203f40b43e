"""`emu35 serve --config FILE`: the YAML file sets everything the flags set, flags override it,
mistakes end in one line naming the field; deployment options per stage (no cluster here)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.cli import build_parser, main
from cluster.placement import StageScaling, deployment_options
from cluster.serve_cmd import config_from_args
from services.model.tiny import write_tiny_checkpoint
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
    assert st.proxy_target == "127.0.0.1:9100"  # stages reach a wildcard bind over loopback
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
    assert cfg.stages.storage.backend == "local" and cfg.stages.proxy_target == "127.0.0.1:9200"
    assert cfg.stages.max_waiting == 7  # not given as a flag: the file's


@pytest.mark.parametrize("change, message", [
    ({"stages": {"generator": {"min_replicas": 3, "max_replicas": 2}}},
     "stages.generator.max_replicas: 2 is below min_replicas 3"),
    ({"stages": {"genrator": {}}}, "stages.genrator: unknown field"),
    ({"engine": {"kv_blocks": 0}}, "engine.kv_blocks: Input should be greater than or equal to 1"),
    ({"server": {"grpc_port": "nine"}}, "server.grpc_port: Input should be a valid integer"),
    ({"storage": {"backend": "s3"}}, "storage.bucket: required with backend s3"),
    ({"storage": {"backend": "s3", "bucket": "b3x", "secret_key": "x"}},
     "storage.secret_key: credentials are read from the environment"),
    ({"model": {"path": "ckpt/llm"}}, "model.vision_tokenizer: required with model.path"),
    ({"model": {"vision_tokenizer": "x"}}, "model.path: give exactly one of model.path"),
    ({"model": {"path": "nope", "vision_tokenizer": "x"}}, "model.path (--model): not a directory"),
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
                             tensor_parallel_size=2)
    with pytest.raises(ValueError, match="tensor_parallel_size: 2 GPUs per generator replica"):
        GeneratorStage.func_or_class(settings)
