"""Checks made before anything heavy starts (Ray, a checkpoint load): the device, the
checkpoint's files, and (``emu35 serve``) that the public ports are free. Each failure is one
line naming the flag or setting, so a mistake shows in a second instead of as a replica that
fails to deploy half a minute later with its cause in Ray's log files."""
from __future__ import annotations

import errno
import re
import socket
from pathlib import Path

_DEVICE = re.compile(r"(cpu|cuda)(?::(\d+))?")


class PreflightError(ValueError):
    """What would make the start fail, in one line naming the flag or setting."""


def check_device(device: str, field: str = "--device") -> None:
    """``cpu``, ``cuda`` or ``cuda:N`` with CUDA available and N a present device."""
    m = _DEVICE.fullmatch(device)
    if m is None:
        raise PreflightError(f"{field}: {device[:40]!r} is not a device; use cpu, cuda or cuda:N")
    if m.group(1) == "cpu":
        if m.group(2) is not None:
            raise PreflightError(f"{field}: {device!r} is not a device; use cpu")
        return
    import torch

    if not torch.cuda.is_available():
        raise PreflightError(f"{field}: {device} requested but CUDA is not available on this "
                             "machine (torch.cuda.is_available() is False); use cpu")
    index, count = int(m.group(2) or 0), torch.cuda.device_count()
    if index >= count:
        raise PreflightError(f"{field}: {device} requested but this machine has {count} CUDA "
                             f"device(s) (cuda:0..cuda:{count - 1})")


def check_checkpoint(model: Path, vision_tokenizer: Path, tokenizer: str | Path | None = None,
                     names: tuple[str, str, str] = ("--model", "--vision-tokenizer",
                                                    "--tokenizer")) -> None:
    """The files each loader reads exist and their headers parse: the LLM's config.json and
    safetensors (index and shards), the IBQ's config.yaml and model.ckpt, and the text
    tokenizer's files (in ``tokenizer``, default the model directory)."""
    from services.model.config import Emu35Config
    from services.model.ibq.config import IBQConfig
    from services.model.ibq.tokenizer import CHECKPOINT_FILE, CONFIG_FILE
    from services.model.loader import checkpoint_files
    from services.model.text_tokenizer import TIKTOKEN_FILE, VISION_TOKENS_FILE

    model_name, vq_name, tok_name = names
    _directory(model, model_name)
    _parse(lambda: Emu35Config.from_file(model), model_name)
    _parse(lambda: checkpoint_files(model), model_name)
    _directory(vision_tokenizer, vq_name)
    _file(vision_tokenizer / CONFIG_FILE, vq_name)
    _file(vision_tokenizer / CHECKPOINT_FILE, vq_name)
    _parse(lambda: IBQConfig.from_yaml(vision_tokenizer / CONFIG_FILE), vq_name)
    tok_dir, tok_field = (Path(tokenizer), tok_name) if tokenizer else (model, model_name)
    _directory(tok_dir, tok_field)
    for name in (TIKTOKEN_FILE, VISION_TOKENS_FILE):
        _file(tok_dir / name, tok_field, hint=f" (point {tok_name} at a directory with the "
                                              "Emu3.5 tokenizer files)")


def _directory(path: Path, field: str) -> None:
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise PreflightError(f"{field}: {path} {what}")


def _file(path: Path, field: str, hint: str = "") -> None:
    if not path.is_file():
        raise PreflightError(f"{field}: {path.name} not found in {path.parent}{hint}")


def _parse(read, field: str) -> None:
    try:
        read()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PreflightError(f"{field}: {_one_line(e)}") from None


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


def check_ports(host: str, ports: dict[str, int]) -> None:
    """Each port ({flag: port}) can be bound on ``host`` by a socket without SO_REUSEPORT, so
    that no other listener holds it. (gRPC sets SO_REUSEPORT: without this check a second
    cluster would bind the same port and share its connections.)"""
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            raise PreflightError(f"{flag}: {port} is also {seen[port]}")
        seen[port] = flag
        try:
            addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise PreflightError(f"--host: cannot resolve {host[:80]!r} ({e.strerror})") from None
        for family, kind, proto, _, address in addresses:
            _bind_test(family, kind, proto, address, flag, host)


def _bind_test(family, kind, proto, address, flag: str, host: str) -> None:
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind(address)
            s.listen(1)
        except OSError as e:
            shown = f"[{address[0]}]:{address[1]}" if family == socket.AF_INET6 else \
                f"{address[0]}:{address[1]}"
            if e.errno == errno.EADDRINUSE:
                raise PreflightError(f"{flag}: {shown} is in use") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise PreflightError(f"--host: {host} is not an address of this machine") from None
            if e.errno == errno.EACCES:
                raise PreflightError(f"{flag}: {shown} needs privileges (a port below 1024)") from None
            raise PreflightError(f"{flag}: cannot listen on {shown} ({e.strerror})") from None
