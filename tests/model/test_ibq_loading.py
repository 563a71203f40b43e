"""IBQ checkpoints: released format, strict and safe loading, named errors (spec §7.1-7.2)."""


from __future__ import annotations

import builtins
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from services.model.ibq import (
    IBQCheckpointError,
    IBQConfig,
    IBQConfigError,
    VisionTokenizer,
    write_tiny_vision_tokenizer,
)


from .ibq_fixtures import N_EMBED, copy_tokenizer, random_image  # noqa: F401


REPO_ROOT = Path(__file__).resolve().parents[2]

# The released tokenizer (spec §7.1): 455.3M parameters.
RELEASED = IBQConfig(
    n_embed=131072, embed_dim=256, ch=256, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=4,
    attn_resolutions=(16,), resolution=256, z_channels=256,
)



# ---------------------------------------------------------------- strict, safe loading


def test_tiny_writer_is_deterministic_and_released_format(tmp_path, tiny_dir):
    cfg = write_tiny_vision_tokenizer(tmp_path, n_embed=N_EMBED, seed=0)
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert raw["ddconfig"]["ch_mult"] == [1, 1, 2, 2, 4] and raw["n_embed"] == N_EMBED
    assert IBQConfig.from_yaml(tmp_path / "config.yaml") == cfg
    a = torch.load(tmp_path / "model.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tiny_dir / "model.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unwrapped_state_dict_and_training_keys_load(tmp_path, tiny_dir):
    out = copy_tokenizer(tiny_dir, tmp_path / "t", config_edit=lambda c: c.update(
        beta=0.25, use_entropy_loss=True, cosine_similarity=False, entropy_temperature=0.01,
        sample_minimization_weight=1.0, batch_maximization_weight=1.0))
    sd = torch.load(out / "model.ckpt", weights_only=True)["state_dict"]
    torch.save(sd, out / "model.ckpt")
    assert VisionTokenizer.from_dir(out).n_embed == N_EMBED


@pytest.mark.parametrize(
    "edit, names",
    [
        (lambda sd: sd.pop("decoder.up.0.block.1.conv2.weight"),
         ["missing", "decoder.up.0.block.1.conv2.weight"]),
        (lambda sd: sd.update({"encoder.extra.weight": torch.zeros(2)}),
         ["unexpected", "encoder.extra.weight"]),
        (lambda sd: sd.update({"quant_conv.bias": torch.zeros(7)}),
         ["shape mismatch", "quant_conv.bias", "(7,)", "(16,)"]),
        (lambda sd: sd.update({"quant_conv.bias": "zeros"}), ["not tensors", "quant_conv.bias"]),
    ],
)
def test_strict_loading_names_the_bad_keys(tmp_path, tiny_dir, edit, names):
    out = copy_tokenizer(tiny_dir, tmp_path / "t", state_edit=edit)
    with pytest.raises(IBQCheckpointError) as info:
        VisionTokenizer.from_dir(out)
    assert all(name in str(info.value) for name in names), str(info.value)


class _RunsCode:
    """Unpickling this calls exec() on attacker-chosen source."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_checkpoint_with_code_is_refused(tmp_path, tiny_dir):
    out = copy_tokenizer(tiny_dir, tmp_path / "t")
    marker = tmp_path / "executed"
    sd = torch.load(out / "model.ckpt", weights_only=True)["state_dict"]
    torch.save({"state_dict": sd, "payload": _RunsCode(marker)}, out / "model.ckpt")
    with pytest.raises(IBQCheckpointError, match="model.ckpt"):
        VisionTokenizer.from_dir(out)
    assert not marker.exists()


def test_missing_files_are_named(tmp_path, tiny_dir):
    out = copy_tokenizer(tiny_dir, tmp_path / "t")
    (out / "model.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="model.ckpt"):
        VisionTokenizer.from_dir(out)
    (out / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        VisionTokenizer.from_dir(out)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VisionTokenizer.from_dir(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda c: c["ddconfig"].update(ch_mult="1,2"),
         "ddconfig.ch_mult must be a list of positive ints"),
        (lambda c: c["ddconfig"].update(ch_mult=[1, 0]), "ddconfig.ch_mult"),
        (lambda c: c.pop("n_embed"), "n_embed is missing"),
        (lambda c: c["ddconfig"].pop("z_channels"), "ddconfig.z_channels is missing"),
        (lambda c: c["ddconfig"].update(ch=48), "ddconfig.ch must be a multiple of 32"),
        (lambda c: c["ddconfig"].update(num_res_blocks=True), "ddconfig.num_res_blocks"),
        (lambda c: c["ddconfig"].update(double_z=True), "ddconfig.double_z"),
        (lambda c: c["ddconfig"].update(resamp_with_conv=False), "ddconfig.resamp_with_conv"),
        (lambda c: c.update(ddconfig=[1]), "ddconfig must be a mapping"),
    ],
)
def test_bad_config_fields_are_named(tmp_path, tiny_dir, edit, field):
    out = copy_tokenizer(tiny_dir, tmp_path / "t", config_edit=edit)
    with pytest.raises(IBQConfigError) as info:
        VisionTokenizer.from_dir(out)
    assert str(info.value).startswith("config.yaml: ") and field in str(info.value)


def test_config_is_frozen_and_roundtrips(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(RELEASED.to_yaml_dict()))
    assert IBQConfig.from_yaml(tmp_path / "config.yaml") == RELEASED
    with pytest.raises(dataclasses.FrozenInstanceError):
        RELEASED.ch = 64  # type: ignore[misc]
    (tmp_path / "config.yaml").write_text("ddconfig: [unclosed")
    with pytest.raises(IBQConfigError, match="config.yaml"):
        IBQConfig.from_yaml(tmp_path / "config.yaml")
