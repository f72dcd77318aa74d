"""An external processor that knows nothing of asyncproc but its HTTP API (API.md
section 14): httpx only, as a team would write one in any language.

    python tests/external/httpx_processor.py URL KIND NAME

Each job's content is `{"steps": n, "delay": seconds}`: it reports each step (the
report renews the lease and answers whether a stop was requested), confirms a stop,
and ends with the JSON result `{"by": NAME, "attempt": attempt, "steps": n}`. It prints
`took <id> <attempt>` and `done <id>` / `stopped <id>` lines as it goes.
"""

from __future__ import annotations

import sys
import time

import httpx


def main(url: str, kind: str, name: str) -> None:
    """Take and run jobs of `kind` from the server at `url` forever."""
    with httpx.Client(base_url=url, timeout=30) as http:
        while True:
            try:
                taken = http.post(
                    "/api/workers/take", json={"kinds": [kind], "worker": name, "wait": 2}
                )
            except httpx.TransportError:
                time.sleep(0.5)  # the server restarts or is not up yet
                continue
            if taken.status_code != 200:
                time.sleep(0.5)
                continue
            for item in taken.json()["items"]:
                run(http, name, item)


def run(http: httpx.Client, name: str, item: dict) -> None:  # type: ignore[type-arg]
    """Run one job: steps with progress, then its result, or a confirmed stop."""
    job_id, token = item["job"]["id"], item["token"]
    attempt = item["job"]["attempt"]
    print(f"took {job_id} {attempt}", flush=True)
    steps, delay = item["content"]["steps"], item["content"]["delay"]
    base = f"/api/workers/jobs/{job_id}"
    for step in range(1, steps + 1):
        time.sleep(delay)
        report = {"token": token, "percent": 100 * step / steps, "bizStep": f"step {step}"}
        answer = http.post(f"{base}/progress", json=report)
        if answer.status_code == 409:  # lease lost: someone else runs it now
            print(f"lost {job_id}", flush=True)
            return
        if answer.json()["stopRequested"]:
            http.post(f"{base}/stopped", json={"token": token})
            print(f"stopped {job_id}", flush=True)
            return
    result = {"by": name, "attempt": attempt, "steps": steps}
    http.put(f"{base}/result", params={"token": token}, json=result)
    print(f"done {job_id}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
