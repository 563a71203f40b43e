"""Build the four stage applications and run them on a local Ray (``emu35 serve``)."""
from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field

from services.stages.settings import APP_NAMES, StageSettings

log = logging.getLogger(__name__)

SERVICERS = [
    "emu35_proto.v1.api_pb2_grpc.add_Emu35Servicer_to_server",
    "emu35_proto.v1.stages_pb2_grpc.add_VisionEncoderServicer_to_server",
    "emu35_proto.v1.stages_pb2_grpc.add_GeneratorServicer_to_server",
    "emu35_proto.v1.stages_pb2_grpc.add_ImageDecoderServicer_to_server",
]


@dataclass(frozen=True)
class StageScaling:
    """Replicas and resources of one stage (fractional CPUs in local mode)."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8.0
    num_cpus: float = 0.5
    num_gpus: float = 0.0


@dataclass(frozen=True)
class ServeConfig:
    stages: StageSettings
    host: str = "127.0.0.1"
    grpc_port: int = 9000
    http_port: int = 8000
    scaling: dict = field(default_factory=lambda: {
        "gateway": StageScaling(num_cpus=0.25), "encoder": StageScaling(num_cpus=0.25),
        "generator": StageScaling(num_cpus=1.0, target_ongoing_requests=32),
        "decoder": StageScaling(num_cpus=0.25)})


def build_apps(cfg: ServeConfig) -> dict:
    """One Serve application per stage, each with its own autoscaling and resources."""
    from services.stages.deployments import DecoderStage, EncoderStage, GatewayStage, GeneratorStage

    classes = {"gateway": GatewayStage, "encoder": EncoderStage, "generator": GeneratorStage,
               "decoder": DecoderStage}
    apps = {}
    for stage, cls in classes.items():
        sc = cfg.scaling[stage]
        options = dict(name=stage, ray_actor_options={"num_cpus": sc.num_cpus, "num_gpus": sc.num_gpus})
        if sc.max_replicas > sc.min_replicas:
            options["autoscaling_config"] = {"min_replicas": sc.min_replicas,
                                             "max_replicas": sc.max_replicas,
                                             "target_ongoing_requests": sc.target_ongoing_requests}
        else:
            options["num_replicas"] = sc.min_replicas
        if stage == "generator":
            options["max_ongoing_requests"] = max(64, int(sc.target_ongoing_requests * 2))
        apps[APP_NAMES[stage]] = cls.options(**options).bind(cfg.stages)
    return apps


def start(cfg: ServeConfig) -> None:
    """Start local Ray (loopback only), Serve's proxies and the four applications."""
    import ray
    from ray import serve

    from .netbind import ENV

    ray.init(include_dashboard=False, _node_ip_address=cfg.host, num_cpus=8,
             object_store_memory=512 << 20, configure_logging=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "cluster.netbind.bind_loopback",
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


def stop() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def serve_forever(cfg: ServeConfig) -> None:
    """Run until SIGINT/SIGTERM, then shut everything down cleanly."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    start(cfg)
    print(f"emu35 serving gRPC on {cfg.host}:{cfg.grpc_port}; Ctrl-C to stop", flush=True)
    try:
        done.wait()
    finally:
        stop()
