"""A FAKE Kubernetes API server on loopback, for the Kubernetes backend's tests.

No real API server (nor kubelet) can run on this machine, so this stands in for one:
it serves the few REST paths the backend uses (create/read/list/delete Jobs, list pods,
read a pod's log) with the JSON shapes of the real API, so that the official client
is exercised for real over HTTP. Like a real API server it rejects a Job that does not
validate against the Kubernetes OpenAPI schema (HTTP 422, via `kubernetes-validate`)
and answers 409 for a name that exists. Pods never run by themselves: a test moves them
through their states (`start`, `finish`), standing in for the kubelet and the Job
controller. What this cannot show: scheduling, image pulls, volumes and the real
controllers' timing.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import kubernetes_validate

KUBERNETES_VERSION = "1.37.0"
"""Schema version the fake API validates against (the newest `kubernetes-validate` has)."""
JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Raise kubernetes_validate.ValidationError if `manifest` breaks the OpenAPI schema."""
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def _time(offset_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKubeApi:
    """In-memory Jobs and pods behind a loopback HTTP server (see the module docstring)."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.logs: dict[str, str] = {}
        self.requests: Counter[str] = Counter()
        """Requests by `METHOD path-kind` (e.g. `GET jobs`), to count API calls."""
        self.rejected: list[str] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeKubeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what the kubelet and the Job controller would do -------------------------------

    def pod_of(self, job: str, namespace: str = "default") -> dict[str, Any]:
        return self.pods[(namespace, f"{job}-abcde")]

    def start(self, job: str, *, started_s_ago: float = 0.0, namespace: str = "default") -> None:
        """The pod's container runs (started `started_s_ago` seconds ago)."""
        with self.lock:
            pod = self.pod_of(job, namespace)
            pod["status"] = {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "job", "image": "x", "imageID": "", "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": _time(-started_s_ago)}},
                    }
                ],
            }  # fmt: skip
            self.jobs[(namespace, job)]["status"] = {"active": 1, "startTime": _time()}

    def finish(
        self,
        job: str,
        *,
        exit_code: int,
        wall_s: float = 10.0,
        container_reason: str | None = None,
        job_reason: str | None = None,
        log: str = "",
        namespace: str = "default",
    ) -> None:
        """The container ends with `exit_code`; the Job gets its Complete/Failed condition."""
        with self.lock:
            pod = self.pod_of(job, namespace)
            terminated = {
                "exitCode": exit_code,
                "startedAt": _time(-wall_s),
                "finishedAt": _time(),
                "reason": container_reason or ("Completed" if exit_code == 0 else "Error"),
            }
            pod["status"] = {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": "job", "image": "x", "imageID": "", "ready": False,
                        "restartCount": 0, "state": {"terminated": terminated},
                    }
                ],
            }  # fmt: skip
            self.logs[pod["metadata"]["name"]] = log
            kind = "Complete" if exit_code == 0 else "Failed"
            condition = {"type": kind, "status": "True", "lastTransitionTime": _time()}
            if job_reason or exit_code:
                condition["reason"] = job_reason or "BackoffLimitExceeded"
            self.jobs[(namespace, job)]["status"] = {
                "conditions": [condition],
                "succeeded" if exit_code == 0 else "failed": 1,
            }

    # -- HTTP ---------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                del format, args  # quiet

            def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: HTTPStatus, message: str) -> None:
                body = {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": message, "reason": code.phrase.replace(" ", ""), "code": code.value,
                }  # fmt: skip
                self._send(code.value, body)

            def do_POST(self) -> None:
                url = urlparse(self.path)
                match = JOBS.match(url.path)
                api.requests["POST jobs"] += 1
                if not match or match.group(2):
                    return self._status(HTTPStatus.NOT_FOUND, url.path)
                namespace = match.group(1)
                manifest = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    validate_manifest(manifest)
                except kubernetes_validate.ValidationError as exc:
                    api.rejected.append(str(exc))
                    return self._status(HTTPStatus.UNPROCESSABLE_ENTITY, f"invalid Job: {exc}")
                name = manifest["metadata"]["name"]
                with api.lock:
                    if (namespace, name) in api.jobs:
                        return self._status(HTTPStatus.CONFLICT, f'jobs "{name}" already exists')
                    manifest["metadata"] |= {"uid": name, "creationTimestamp": _time()}
                    manifest["status"] = {}
                    api.jobs[(namespace, name)] = manifest
                    labels = dict(manifest["spec"]["template"]["metadata"].get("labels", {}))
                    labels |= {"job-name": name, "batch.kubernetes.io/job-name": name}
                    pod = {
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": f"{name}-abcde", "namespace": namespace,
                                     "labels": labels},
                        "spec": manifest["spec"]["template"]["spec"],
                        "status": {"phase": "Pending"},
                    }  # fmt: skip
                    api.pods[(namespace, pod["metadata"]["name"])] = pod
                self._send(HTTPStatus.CREATED.value, manifest)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                selector = parse_qs(url.query).get("labelSelector", [""])[0]
                if match := JOBS.match(url.path):
                    namespace, name = match.groups()
                    api.requests["GET jobs" if name is None else "GET job"] += 1
                    with api.lock:
                        if name is not None:
                            job = api.jobs.get((namespace, name))
                            if job is None:
                                return self._status(
                                    HTTPStatus.NOT_FOUND, f'jobs "{name}" not found'
                                )
                            return self._send(200, job)
                        items = _select(api.jobs, namespace, selector)
                    return self._send(
                        200, {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {},
                              "items": items}
                    )  # fmt: skip
                if match := PODS.match(url.path):
                    api.requests["GET pods"] += 1
                    with api.lock:
                        items = _select(api.pods, match.group(1), selector)
                    return self._send(
                        200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
                    )
                if match := LOG.match(url.path):
                    api.requests["GET log"] += 1
                    return self._send(200, api.logs.get(match.group(2), ""), "text/plain")
                return self._status(HTTPStatus.NOT_FOUND, url.path)

            def do_DELETE(self) -> None:
                url = urlparse(self.path)
                match = JOBS.match(url.path)
                api.requests["DELETE job"] += 1
                if not match or not match.group(2):
                    return self._status(HTTPStatus.NOT_FOUND, url.path)
                namespace, name = match.groups()
                with api.lock:
                    if api.jobs.pop((namespace, name), None) is None:
                        return self._status(HTTPStatus.NOT_FOUND, f'jobs "{name}" not found')
                    api.pods.pop((namespace, f"{name}-abcde"), None)
                body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
                self._send(200, body)

        return Handler


def _select(
    objects: dict[tuple[str, str], dict[str, Any]], namespace: str, selector: str
) -> list[dict[str, Any]]:
    """Objects of the namespace whose labels match an equality selector `k=v,k2=v2`."""
    wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
    return [
        obj
        for (ns, _), obj in objects.items()
        if ns == namespace
        and all(obj["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
    ]
