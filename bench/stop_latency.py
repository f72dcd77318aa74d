"""Cross-node stop latency: a stop sent to an `api` node, the job running on a `worker` node.

Starts two real node processes (Redis state, RabbitMQ queue, unique key prefix), runs
`--jobs` long demo.count jobs one after the other, and for each measures the time from
sending `POST /api/jobs/{id}/stop` to the api node until the api node reports the job
`stopped` (the handler on the worker has been cancelled and has exited). Prints p50,
p99 and max in milliseconds.

    python bench/stop_latency.py --jobs 50
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_node(
    role: str, prefix: str, args: argparse.Namespace
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python app.py` in `role`; returns the process and its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "ASYNCPROC_ROLE": role,
        "ASYNCPROC_STATE": "redis",
        "ASYNCPROC_QUEUE": "rabbitmq",
        "ASYNCPROC_REDIS_URL": args.redis_url,
        "ASYNCPROC_AMQP_URL": args.amqp_url,
        "ASYNCPROC_KEY_PREFIX": prefix,
    }
    process = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{role} node did not become healthy")


def measure(api: str, jobs: int) -> list[float]:
    """Stop latencies in seconds, one per job."""
    latencies = []
    with httpx.Client(base_url=api, timeout=30) as client:
        for _ in range(jobs):
            job = client.post(
                "/api/demo.count/enqueue", json={"content": {"n": 100_000, "delay": 0.01}}
            ).json()
            job_id = job["id"]
            version = job["version"]
            while True:  # long poll until it runs on the worker
                status = client.get(f"/api/jobs/{job_id}", params={"wait": 10, "since": version})
                status_body = status.json()
                version = status_body["version"]
                if status_body["progress"]["bizStep"] == "counting":
                    break
            sent = time.perf_counter()
            client.post(f"/api/jobs/{job_id}/stop")
            while True:
                body = client.get(
                    f"/api/jobs/{job_id}", params={"wait": 10, "since": version}
                ).json()
                version = body["version"]
                if body["state"] == "stopped":
                    latencies.append(time.perf_counter() - sent)
                    break
    return latencies


async def delete_queues(amqp_url: str, prefix: str) -> None:
    """Remove the benchmark's queues and exchanges from the broker."""
    from asyncproc.backends.rabbitmq import RabbitMQQueue

    queue = RabbitMQQueue(amqp_url, prefix=prefix)
    await queue.delete(["default"])
    await queue.aclose()


def main() -> None:
    """Run the measurement and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    prefix = f"asyncproc-bench-{uuid.uuid4().hex[:8]}:"
    api, api_url = start_node("api", prefix, args)
    worker, _ = start_node("worker", prefix, args)
    try:
        latencies = sorted(1000 * s for s in measure(api_url, args.jobs))
    finally:
        for process in (worker, api):
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        import redis  # cleanup only

        client = redis.Redis.from_url(args.redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        anyio.run(delete_queues, args.amqp_url, prefix)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(
        f"stop api->worker->stopped over {len(latencies)} jobs: "
        f"p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms, max {latencies[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
