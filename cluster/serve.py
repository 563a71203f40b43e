"""Build the four stage applications and run them on a local Ray (``emu35 serve``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from services.settings import RaySettings
from services.stages.settings import APP_NAMES, StageSettings

from .placement import StageScaling, deployment_options

log = logging.getLogger(__name__)

SERVICERS = [
    "emu35_proto.v1.api_pb2_grpc.add_Emu35Servicer_to_server",
    "emu35_proto.v1.stages_pb2_grpc.add_VisionEncoderServicer_to_server",
    "emu35_proto.v1.stages_pb2_grpc.add_GeneratorServicer_to_server",
    "emu35_proto.v1.stages_pb2_grpc.add_ImageDecoderServicer_to_server",
]


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
    """One Serve application per stage, each with its own autoscaling and resources."""
    from services.stages.deployments import DecoderStage, EncoderStage, GatewayStage, GeneratorStage

    classes = {"gateway": GatewayStage, "encoder": EncoderStage, "generator": GeneratorStage,
               "decoder": DecoderStage}
    tp = cfg.stages.tensor_parallel_size
    return {APP_NAMES[stage]: cls.options(**deployment_options(stage, cfg.scaling[stage], tp))
            .bind(cfg.stages) for stage, cls in classes.items()}


def start(cfg: ServeConfig) -> None:
    """Start local Ray, Serve's proxies and the four applications. On a loopback host nothing
    listens beyond loopback (cluster/netbind.py)."""
    from .netbind import ENV, is_loopback, keep_ray_on_loopback

    local = is_loopback(cfg.host)
    if local:
        keep_ray_on_loopback()
    import ray
    from ray import serve

    ray.init(_node_ip_address="127.0.0.1" if local else None, include_dashboard=False,
             num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus,
             object_store_memory=cfg.ray.object_store_memory, configure_logging=False,
             log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "cluster.netbind.bind_serve_grpc",
                          "env_vars": {ENV: cfg.host}})
    serve.start(http_options={"host": cfg.host, "port": cfg.http_port},
                grpc_options={"port": cfg.grpc_port, "grpc_servicer_functions": SERVICERS})
    apps = build_apps(cfg)
    # Downstream stages first, so the gateway finds them ready.
    for name in ("encoder", "decoder", "generator", "gateway"):
        app_name = APP_NAMES[name]
        # A route prefix makes the application reachable through the proxies (gRPC selects it
        # by the "application" metadata key).
        serve.run(apps[app_name], name=app_name, route_prefix=f"/{app_name}", blocking=False)
    log.info("emu35 serving on %s:%d (gRPC)", cfg.host, cfg.grpc_port)


def replica_states() -> dict:
    """{application: {deployment: {state: count}}} from Serve's status."""
    from ray import serve

    return {app: {dep: dict(d.replica_states) for dep, d in a.deployments.items()}
            for app, a in serve.status().applications.items()}
