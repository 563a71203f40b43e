"""Build the four stage applications and run them on a local Ray (``emu35 serve``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from services.settings import RaySettings
from services.stages.settings import StageSettings

from .placement import StageScaling, deployment_options

log = logging.getLogger(__name__)

# Only the public API is a service on Serve's gRPC proxy: a call to any other method (the
# stages' included) is answered UNIMPLEMENTED by the proxy's gRPC server itself.
SERVICERS = ["emu35_proto.v1.api_pb2_grpc.add_Emu35Servicer_to_server"]
# The one Serve application; its ingress is the gateway. The name is the client's default
# `application` metadata (clients/emu35_client/channel.py DEFAULT_APPLICATION); with one
# application Serve's proxy routes calls without that key as well.
PUBLIC_APP = "emu35-gateway"


@dataclass(frozen=True)
class ServeConfig:
    """What ``start`` needs, derived from the one settings model (cluster/serve_cmd.py)."""

    stages: StageSettings
    host: str
    grpc_port: int
    http_port: int
    scaling: dict[str, StageScaling]
    ray: RaySettings


def build_apps(cfg: ServeConfig) -> dict:
    """One application: the gateway deployment as ingress, the encoder, generator and decoder
    bound to it as handles. Each deployment keeps its own replicas, autoscaling and resources."""
    from services.stages.deployments import DecoderStage, EncoderStage, GeneratorStage
    from services.stages.gateway import GatewayStage

    tp = cfg.stages.tensor_parallel_size
    scaling = admission_scaling(cfg.scaling, cfg.stages)

    def bound(stage: str, cls, *args):
        return cls.options(**deployment_options(stage, scaling[stage], tp)).bind(cfg.stages, *args)

    stages = [bound(name, cls) for name, cls in (("encoder", EncoderStage),
                                                 ("generator", GeneratorStage),
                                                 ("decoder", DecoderStage))]
    return {PUBLIC_APP: bound("gateway", GatewayStage, *stages)}


def admission_scaling(scaling: dict, stages) -> dict:
    """Per-replica caps that leave admission to the engine (issue 11 item 5): Serve queues a
    call beyond a replica's ``max_ongoing_requests`` in its router, unseen by the engine, where a
    burst waits out its deadline instead of getting RESOURCE_EXHAUSTED. So the generator's cap
    is raised above the engine's own bound (its queue plus a batch), and the gateway's cap,
    which also bounds Health and Info calls, well above that."""
    from dataclasses import replace

    engine_bound = stages.max_waiting + stages.max_num_seqs
    floors = {"generator": engine_bound + 64, "gateway": 4 * (engine_bound + 64)}
    out = dict(scaling)
    for stage, floor in floors.items():
        if out[stage].max_ongoing_requests < floor:
            out[stage] = replace(out[stage], max_ongoing_requests=floor)
    return out


def start(cfg: ServeConfig) -> None:
    """Start local Ray, Serve's proxies and the application. On a loopback host nothing
    listens beyond loopback; the public port takes messages up to the largest legal request
    (cluster/netbind.py)."""

    from .netbind import (ENV, MAX_MESSAGE_ENV, REPLICA_MESSAGE_ENV, is_loopback,
                          keep_ray_on_loopback, max_request_bytes)

    local = is_loopback(cfg.host)
    if local:
        keep_ray_on_loopback()
    import ray
    from ray import serve

    largest = max_request_bytes(cfg.stages.limits)  # the limits the gateway enforces
    ray.init(_node_ip_address="127.0.0.1" if local else None, include_dashboard=False,
             num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus,
             object_store_memory=cfg.ray.object_store_memory, configure_logging=False,
             log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "cluster.netbind.setup_worker",
                          "env_vars": {ENV: cfg.host, MAX_MESSAGE_ENV: str(largest),
                                       # the stage calls between replicas carry the images
                                       # too (Serve's default there is gRPC's 4 MiB)
                                       REPLICA_MESSAGE_ENV: str(largest)}})
    serve.start(http_options={"host": cfg.host, "port": cfg.http_port},
                grpc_options={"port": cfg.grpc_port, "grpc_servicer_functions": SERVICERS})
    # A route prefix makes the application reachable through the proxies (gRPC routes by the
    # "application" metadata key, or to the only application without it).
    serve.run(build_apps(cfg)[PUBLIC_APP], name=PUBLIC_APP, route_prefix=f"/{PUBLIC_APP}",
              blocking=False)
    log.info("emu35 serving on %s:%d (gRPC)", cfg.host, cfg.grpc_port)


def replica_states() -> dict:
    """{application: {deployment: {state: count}}} from Serve's status."""
    from ray import serve

    return {app: {dep: dict(d.replica_states) for dep, d in a.deployments.items()}
            for app, a in serve.status().applications.items()}
