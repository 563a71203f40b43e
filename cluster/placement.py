"""Serve deployment options per stage: replicas or autoscaling, resources, and the generator's
tensor-parallel placement group."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageScaling:
    """Replicas and resources of one stage (fractional CPUs in local mode)."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8.0   # autoscaling signal (when max > min)
    max_ongoing_requests: int = 64         # per replica; more wait in Serve's router
    num_cpus: float = 0.5
    num_gpus: float = 0.0                  # per replica (tensor_parallel_size 1)


def deployment_options(stage: str, sc: StageScaling, tensor_parallel_size: int = 1) -> dict:
    """Options for ``Deployment.options``: the stage's replicas and where they run."""
    options = {"name": stage, "max_ongoing_requests": sc.max_ongoing_requests}
    if sc.max_replicas > sc.min_replicas:
        options["autoscaling_config"] = {"min_replicas": sc.min_replicas,
                                         "max_replicas": sc.max_replicas,
                                         "target_ongoing_requests": sc.target_ongoing_requests}
    else:
        options["num_replicas"] = sc.min_replicas
    if stage == "generator" and tensor_parallel_size > 1:
        options.update(tensor_parallel_placement(tensor_parallel_size, sc.num_cpus))
    else:
        options["ray_actor_options"] = {"num_cpus": sc.num_cpus, "num_gpus": sc.num_gpus}
    return options


def tensor_parallel_placement(size: int, num_cpus: float) -> dict:
    """One placement group per generator replica: bundle 0 holds the replica actor itself
    (Ray Serve schedules the replica into the first bundle, so its ray_actor_options must fit
    there), then one GPU bundle per tensor-parallel rank. STRICT_PACK keeps the whole group on
    one node, where the ranks' all-reduce runs over NVLink rather than the network."""
    return {"ray_actor_options": {"num_cpus": num_cpus, "num_gpus": 0},
            "placement_group_bundles": [{"CPU": num_cpus}] + [{"GPU": 1.0} for _ in range(size)],
            "placement_group_strategy": "STRICT_PACK"}
