"""The Kubernetes backend: a run's job is a `batch/v1` Job in the location's namespace.

The cluster runs the step's image itself (pinned by digest) with the contract's
directories mounted at `/workflow/...` from the location's volumes: `k8s_volumes` maps a
directory of the processing host (the location's path, say) to a Kubernetes volume
source that holds the same files in the cluster (a PersistentVolumeClaim, NFS, CephFS,
hostPath...), and each directory is mounted by `subPath` (input and config read-only).
The flow process reads and writes those files through its own mount of the same storage.

Requests equal limits (cpu, memory, `nvidia.com/gpu`), `activeDeadlineSeconds` is the
step's time limit and `backoffLimit` is 0: retries are the workflow manager's, with a
reason. Status of every watched Job comes from two list calls per polling cycle (Jobs
and pods, by the label all our Jobs carry), never one per job: the Job's conditions
say finished or not, the pod's container says the exit code and why (OOMKilled ->
OUT_OF_MEMORY, DeadlineExceeded -> TIMEOUT), and the pod's timestamps give the wall
time. Kubernetes keeps no CPU time or peak memory of a finished pod (that needs a
metrics pipeline), so those metrics stay empty here. When a Job is seen finished its
pod's log is written to the run's log file, so that it is kept as a LOG product.
Cancel deletes the Job and its pods and leaves a marker, so that any process reads the
Job as CANCELLED afterwards. Job ids are the Job names (unique: they carry run id and
attempt), which makes `find` after a crash one GET.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from infra.backends.base import (
    BackendError,
    JobInfo,
    JobSpec,
    JobState,
    exit_reason,
)
from infra.backends.kubernetes_manifest import (
    CONTAINER,
    LOG_ANNOTATION,
    MANAGED_BY,
    KubernetesSettings,
    job_manifest,
    k8s_name,
)
from infra.backends.polling import PolledBackend

LABEL_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
FAILURE_REASONS = {
    "OOMKilled": "OUT_OF_MEMORY",
    "DeadlineExceeded": "TIMEOUT",
    "Evicted": "PREEMPTED",
    "Preempting": "PREEMPTED",
    "DisruptionTarget": "PREEMPTED",
}
"""Kubernetes reasons that are the cluster's doing, in the words SLURM uses for them."""
FATAL_WAITING = frozenset(
    {"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"}
)
"""Reasons a pod waits forever: the run fails at once instead of at its deadline."""
NOT_FOUND = 404
CONFLICT = 409


class KubernetesBackend(PolledBackend):
    """Runs jobs as Kubernetes Jobs through the official client; see the module docstring."""

    name = "kubernetes"

    def __init__(self, state_dir: Path, settings: KubernetesSettings) -> None:
        """Keep cancel markers under `state_dir/kubernetes` (shared by every flow process)."""
        super().__init__(settings.poll_interval_s)
        self.root = state_dir / "kubernetes"
        self.settings = settings
        self._client: Any = None
        self.calls: dict[str, int] = {}
        """API calls by kind (for benchmarks and tests)."""

    # -- API access -----------------------------------------------------------------------

    def _api(self) -> tuple[Any, Any]:
        """Return the BatchV1 and CoreV1 APIs, connected on first use."""
        with self._lock:
            if self._client is None:
                self._client = _connect(self.settings)
        from kubernetes import client  # noqa: PLC0415 - see _connect

        return client.BatchV1Api(self._client), client.CoreV1Api(self._client)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415 - see _connect

        self.calls[what] = self.calls.get(what, 0) + 1
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            raise _ApiError(what, exc.status, exc.reason, exc.body) from None
        except Exception as exc:  # connection refused, TLS, timeouts: the client's urllib3
            raise BackendError(f"Kubernetes API call {what} failed: {exc}") from exc

    # -- submission -------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        """Create the run's Job; an existing Job of the same name is the same submission."""
        manifest = job_manifest(spec, self.settings)
        name: str = manifest["metadata"]["name"]
        batch, _ = self._api()
        try:
            self._call("create_job", batch.create_namespaced_job, self.settings.namespace, manifest)
        except _ApiError as exc:
            if exc.status != CONFLICT:
                raise
        with self._lock:
            self._watched.setdefault(name, None)
        return name

    def find(self, name: str) -> str | None:
        """Return the Job created under `name` if the cluster still has it."""
        batch, _ = self._api()
        try:
            self._call(
                "read_job", batch.read_namespaced_job, k8s_name(name), self.settings.namespace
            )
        except _ApiError as exc:
            if exc.status == NOT_FOUND:
                return None
            raise
        return k8s_name(name)

    # -- status -----------------------------------------------------------------------------

    def _unknown(self, job_id: str) -> str:
        return f"Kubernetes has no Job {job_id}"

    def _refresh(self) -> None:
        open_ids = self._open_ids()
        if not open_ids:
            self._refreshed = time.monotonic()
            return
        batch, core = self._api()
        namespace = self.settings.namespace
        jobs = self._call(
            "list_jobs", batch.list_namespaced_job, namespace, label_selector=LABEL_SELECTOR
        )
        pods = self._call(
            "list_pods", core.list_namespaced_pod, namespace, label_selector=LABEL_SELECTOR
        )
        by_job: dict[str, Any] = {}
        for pod in pods.items:
            labels = pod.metadata.labels or {}
            owner = labels.get("job-name") or labels.get("batch.kubernetes.io/job-name")
            if owner:
                by_job[owner] = pod
        listed = {job.metadata.name: job for job in jobs.items}
        updates: dict[str, JobInfo] = {}
        for job_id in open_ids:
            job = listed.get(job_id)
            if job is None:
                if self._cancel_marker(job_id).exists():
                    updates[job_id] = JobInfo(JobState.CANCELLED, reason="cancelled")
                continue
            info = job_info(job, by_job.get(job_id))
            if info.state.finished:
                self._save_log(job, by_job.get(job_id))
            updates[job_id] = info
        with self._lock:
            self._watched.update(updates)
            self._refreshed = time.monotonic()

    def _save_log(self, job: Any, pod: Any) -> None:
        """Write the finished pod's log to the run's log file (kept as a LOG product)."""
        path = (job.metadata.annotations or {}).get(LOG_ANNOTATION)
        if not path or pod is None:
            return
        try:
            text = self._pod_log(pod.metadata.name)
        except BackendError as exc:
            text = f"[ccat-wm] the pod's log could not be read: {exc}\n"
        log = Path(path)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text)

    # -- cancel and logs --------------------------------------------------------------------

    def cancel(self, job_id: str) -> None:
        """Delete the Job and its pods; a Job already gone is left alone."""
        marker = self._cancel_marker(job_id)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        batch, _ = self._api()
        try:
            self._call(
                "delete_job",
                batch.delete_namespaced_job,
                job_id,
                self.settings.namespace,
                propagation_policy="Background",
            )
        except _ApiError as exc:
            if exc.status != NOT_FOUND:
                raise
        with self._lock:
            self._watched[job_id] = JobInfo(JobState.CANCELLED, reason="cancelled")

    def logs(self, job_id: str) -> str:
        """Return the log of the Job's pod (empty while no pod has started)."""
        _, core = self._api()
        pods = self._call(
            "list_pods",
            core.list_namespaced_pod,
            self.settings.namespace,
            label_selector=f"job-name={job_id}",
        )
        if not pods.items:
            return ""
        return self._pod_log(pods.items[0].metadata.name)

    def _pod_log(self, pod_name: str) -> str:
        _, core = self._api()
        text = self._call(
            "read_log",
            core.read_namespaced_pod_log,
            pod_name,
            self.settings.namespace,
            container=CONTAINER,
        )
        return str(text or "")

    def _cancel_marker(self, job_id: str) -> Path:
        return self.root / "cancelled" / job_id


class _ApiError(BackendError):
    """An API call answered with an HTTP error status."""

    def __init__(self, what: str, status: int, reason: str, body: Any) -> None:
        super().__init__(f"Kubernetes API call {what} failed: {status} {reason}: {body}")
        self.status = status


def _connect(settings: KubernetesSettings) -> Any:
    """Return an API client: the explicit URL, else kubeconfig, else the in-cluster account."""
    # Imported on first use: the client takes ~0.5 s to import, and every CLI command
    # imports this module through the spec's settings validation.
    from kubernetes import client, config  # noqa: PLC0415

    if settings.api_url:
        configuration = client.Configuration()
        configuration.host = settings.api_url
        return client.ApiClient(configuration)
    try:
        return config.new_client_from_config(context=settings.context)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException as exc:
            raise BackendError(
                "no Kubernetes API: set k8s_api_url, a kubeconfig (KUBECONFIG, ~/.kube/config) "
                f"or run inside the cluster ({exc})"
            ) from None
        return client.ApiClient()


def job_info(job: Any, pod: Any) -> JobInfo:
    """Return what a Job and its pod (None if none yet) say about the run."""
    conditions = {c.type: c for c in (job.status.conditions or []) if c.status == "True"}
    terminated = running = waiting = None
    if pod is not None:
        for status in pod.status.container_statuses or []:
            if status.name == CONTAINER:
                terminated = status.state.terminated
                running = status.state.running
                waiting = status.state.waiting
    wall = None
    if terminated is not None and terminated.started_at and terminated.finished_at:
        wall = _seconds(terminated.started_at, terminated.finished_at)
    elif running is not None and running.started_at:
        wall = _seconds(running.started_at, datetime.now(running.started_at.tzinfo))
    exit_code = terminated.exit_code if terminated is not None else None
    if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
        return JobInfo(JobState.COMPLETED, exit_code if exit_code is not None else 0, wall)
    failed = conditions.get("Failed") or conditions.get("FailureTarget")
    if failed is not None or (terminated is not None and terminated.exit_code != 0):
        reason = _failure_reason(failed, terminated, pod)
        return JobInfo(JobState.FAILED, exit_code, wall, reason=reason)
    if terminated is not None:  # exit 0, the Job's Complete condition follows
        return JobInfo(JobState.RUNNING, None, wall)
    if waiting is not None and waiting.reason in FATAL_WAITING:
        return JobInfo(JobState.FAILED, None, None, reason=f"{waiting.reason}: {waiting.message}")
    if running is not None:
        return JobInfo(JobState.RUNNING, None, wall)
    return JobInfo(JobState.PENDING)


def _failure_reason(condition: Any, terminated: Any, pod: Any) -> str:
    """Return the failure reason: the cluster's words, mapped to SLURM's where they match."""
    candidates = [
        getattr(terminated, "reason", None),
        getattr(getattr(pod, "status", None), "reason", None),
        getattr(condition, "reason", None),
    ]
    for candidate in candidates:
        if candidate in FAILURE_REASONS:
            return FAILURE_REASONS[candidate]
    if terminated is not None and terminated.exit_code is not None:
        return exit_reason(int(terminated.exit_code))
    return str(getattr(condition, "reason", None) or "Job failed")


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())
