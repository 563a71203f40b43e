"""The generator's deployment options on a real Ray with fake GPUs: Serve accepts them and
places the replica as asked (a tensor-parallel placement group, or plain GPUs per replica).
A small probe deployment reports from inside its replica where Ray put it."""
from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from cluster import netbind  # noqa: E402
from cluster.placement import StageScaling, deployment_options  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray cluster at a time


@serve.deployment
class PlacementProbe:
    """Test-only: says which resources and placement group its replica got."""

    def where(self) -> dict:
        ctx = ray.get_runtime_context()
        pg = ray.util.get_current_placement_group()
        return {"resources": ctx.get_assigned_resources(), "pg": pg.id.hex() if pg else None,
                "bundles": pg.bundle_specs if pg else None}


@pytest.fixture(scope="module")
def fake_gpu_ray():
    saved = os.environ.get(netbind.RAY_SINGLE_NODE_ENV)
    netbind.keep_ray_on_loopback()  # nothing of this test's Ray listens beyond loopback
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, object_store_memory=128 << 20,
             configure_logging=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()
        if saved is None:
            os.environ.pop(netbind.RAY_SINGLE_NODE_ENV, None)
        else:
            os.environ[netbind.RAY_SINGLE_NODE_ENV] = saved


def _where(options: dict, app: str) -> dict:
    """The probe's report, with its placement group as Ray's table shows it (while it runs)."""
    handle = serve.run(PlacementProbe.options(**options).bind(), name=app, route_prefix=None)
    try:
        where = handle.where.remote().result(timeout_s=60)
        where["group"] = ray.util.placement_group_table().get(where["pg"])
        return where
    finally:
        serve.delete(app)


def test_tensor_parallel_generator_runs_in_a_strict_pack_gpu_group(fake_gpu_ray):
    options = deployment_options("generator", StageScaling(num_cpus=0.5), tensor_parallel_size=2)
    where = _where(options, "tp2")
    # bundle 0: the replica itself; then one GPU per rank
    assert where["bundles"] == [{"CPU": 0.5}, {"GPU": 1.0}, {"GPU": 1.0}], where
    assert where["resources"].get("CPU") == 0.5 and not where["resources"].get("GPU"), where
    group = where["group"]
    assert group["strategy"] == "STRICT_PACK" and group["state"] == "CREATED", group
    assert group["name"].startswith("SERVE_REPLICA::tp2#generator#"), group  # the replica's own


def test_single_gpu_generator_gets_its_gpu_without_a_group(fake_gpu_ray):
    options = deployment_options("generator", StageScaling(num_cpus=0.5, num_gpus=1.0))
    where = _where(options, "gpu1")
    assert where["pg"] is None and where["group"] is None, where
    assert where["resources"].get("GPU") == 1.0, where

