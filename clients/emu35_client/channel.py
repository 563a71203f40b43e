"""What the sync and async clients share: channel credentials, per-call metadata, deadlines."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from .errors import InvalidArgument

Credentials = bool | grpc.ChannelCredentials

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[\x21-\x7e]*)?")
_API_KEY = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: a valid metadata value


DEFAULT_PORT = 9000  # emu35 serve's default gRPC port; a target without a port gets it

# Ray Serve's gRPC proxy picks the application from this metadata key; emu35-serve's public
# service is the gateway application. None sends no key (a plain gRPC server or an ingress).
DEFAULT_APPLICATION = "emu35-gateway"


@dataclass(frozen=True)
class Connection:
    """Where and how to call: target, TLS, API key, default deadline, channel options."""

    target: str
    api_key: str | None = None
    tls: Credentials = False
    default_timeout: float | None = None
    options: Sequence[tuple[str, Any]] = ()
    application: str | None = DEFAULT_APPLICATION

    def __post_init__(self):
        object.__setattr__(self, "target", with_port(self.target))
        if self.api_key is not None and not (isinstance(self.api_key, str)
                                             and _API_KEY.fullmatch(self.api_key)):
            raise InvalidArgument("api_key: must be printable ASCII without spaces")
        if not isinstance(self.tls, (bool, grpc.ChannelCredentials)):
            raise InvalidArgument(f"tls: expected a bool or grpc.ChannelCredentials, "
                                  f"got {type(self.tls).__name__}")
        check_timeout(self.default_timeout, "default_timeout")

    def open_channel(self, api=grpc):
        """A channel from ``api``: ``grpc`` (sync) or ``grpc.aio``."""
        creds = grpc.ssl_channel_credentials() if self.tls is True else self.tls
        if creds:
            return api.secure_channel(self.target, creds, options=self.options)
        return api.insecure_channel(self.target, options=self.options)

    def metadata(self, traceparent: str | None) -> tuple[tuple[str, str], ...]:
        """``authorization: Bearer <key>`` and the caller's W3C ``traceparent``, when given."""
        md = [("application", self.application)] if self.application else []
        if self.api_key is not None:
            md.append(("authorization", f"Bearer {self.api_key}"))
        if traceparent is not None:
            if not isinstance(traceparent, str) or not _TRACEPARENT.fullmatch(traceparent):
                raise InvalidArgument(f"traceparent: {traceparent!r} is not a W3C traceparent "
                                      "('00-<32 hex>-<16 hex>-<2 hex>')")
            md.append(("traceparent", traceparent))
        return tuple(md)

    def timeout(self, timeout: float | None) -> float | None:
        """The call's deadline in seconds: its own ``timeout``, else ``default_timeout``."""
        check_timeout(timeout, "timeout")
        return self.default_timeout if timeout is None else timeout


def with_port(target: str) -> str:
    """``target`` with the default port (9000) when it names none: gRPC would quietly use 443.
    Targets with a scheme (``dns:///h:p``, ``unix:/path``) are passed on as given."""
    if not isinstance(target, str) or not target.strip() or any(c.isspace() for c in target):
        raise InvalidArgument(f"target: expected 'host:port' or 'host', got {target!r}")
    if "://" in target or target.startswith(("unix:", "unix-abstract:", "vsock:", "ipv4:",
                                             "ipv6:")):
        return target
    host, sep, port = target.rpartition(":")
    if target.startswith("[") and target.endswith("]"):  # "[::1]": IPv6 without a port
        return f"{target}:{DEFAULT_PORT}"
    if not sep or (host.count(":") and not host.endswith("]")):  # "host" or a bare IPv6
        return f"[{target}]:{DEFAULT_PORT}" if ":" in target else f"{target}:{DEFAULT_PORT}"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"target: {target!r} needs a port in 1..65535 after the ':'")
    return target


def check_timeout(value: float | None, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not value > 0):
        raise InvalidArgument(f"{name}: expected seconds > 0 or None, got {value!r}")
