"""A stand-in for the Kubernetes API server, for the rollout tests.

No API server can run on the test machine (no kube-apiserver/etcd binaries, no network to fetch
them), so this in-process HTTP server implements only what `qanchor rollout` calls: GET of
namespaced objects, JSON merge patch (RFC 7386) and server-side apply (stored as sent). Objects
it starts with are built from the official `kubernetes` client models; a Deployment's status is
what its controller would report once pods are ready, except for Deployments named in `stuck`,
whose pods never become ready for any template but the last one that rolled out (a failed
rollout, which undoing the template change recovers from). Every write is
logged, and `checks` (callables of the path and the object about to be stored, returning a
complaint or None) let a test record invariant violations at the moment of each write.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubernetes import client


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch; maps left empty are dropped, as the API server omits empty fields."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            merged = merge_patch(result.get(key), value)
            if merged == {}:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def deployment(name: str, namespace: str, replicas: int = 1) -> dict:
    """A rolled-out Deployment as the API returns it, built from the client's models."""
    model = client.V1Deployment(
        api_version="apps/v1", kind="Deployment",
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, generation=1),
        spec=client.V1DeploymentSpec(
            replicas=replicas, selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": name}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="serving", image="qanchor-serving:0.1.0")]))),
        status=client.V1DeploymentStatus(observed_generation=1, replicas=replicas, ready_replicas=replicas,
                                         updated_replicas=replicas, available_replicas=replicas))
    return client.ApiClient().sanitize_for_serialization(model)


def _status(code: int, reason: str, message: str) -> dict:
    return client.ApiClient().sanitize_for_serialization(
        client.V1Status(api_version="v1", kind="Status", status="Failure", code=code, reason=reason, message=message))


class StandInApiServer:
    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.writes: list[tuple[str, str, dict]] = []
        self.stuck: set[str] = set()
        self._rolled_out: dict[str, dict] = {}  # Deployment path -> the last pod template that became ready
        self.fail_writes: dict[str, int] = {}  # path -> status to answer its next write with
        self.checks: list[Callable[[str, dict], str | None]] = []
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> StandInApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def put(self, path: str, obj: dict) -> None:
        self.objects[path] = copy.deepcopy(obj)

    def _write(self, path: str, new: dict) -> dict:
        old = self.objects.get(path)
        meta = new.setdefault("metadata", {})
        generation = (old or {}).get("metadata", {}).get("generation", 0)
        if old is None or old.get("spec") != new.get("spec"):
            generation += 1
        meta["generation"] = generation
        if new.get("kind") == "Deployment":
            replicas = new["spec"].get("replicas", 1)
            template = new["spec"].get("template")
            last_good = self._rolled_out.setdefault(path, (old or new)["spec"].get("template"))
            if meta["name"] in self.stuck and template != last_good:
                # the new ReplicaSet's pods never become ready; the old ones keep serving
                new["status"] = {"observedGeneration": generation, "replicas": replicas + 1,
                                 "readyReplicas": replicas, "updatedReplicas": 0}
            else:
                self._rolled_out[path] = template
                new["status"] = {"observedGeneration": generation, "replicas": replicas, "readyReplicas": replicas,
                                 "updatedReplicas": replicas, "availableReplicas": replicas}
        self.violations += [v for v in (check(path, new) for check in self.checks) if v]
        self.objects[path] = new
        return new

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                with server._lock:
                    obj = server.objects.get(path)
                if obj is None:
                    self._send(404, _status(404, "NotFound", f"{path} not found"))
                else:
                    self._send(200, obj)

            def do_PATCH(self) -> None:
                path = self.path.split("?")[0]
                kind = self.headers.get("Content-Type", "")
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    if path in server.fail_writes:
                        code = server.fail_writes.pop(path)
                        self._send(code, _status(code, "InternalError", "injected failure"))
                        return
                    if kind == "application/apply-patch+yaml":
                        new = body
                    elif kind == "application/merge-patch+json":
                        if path not in server.objects:
                            self._send(404, _status(404, "NotFound", f"{path} not found"))
                            return
                        new = merge_patch(server.objects[path], body)
                    else:
                        self._send(415, _status(415, "UnsupportedMediaType", kind))
                        return
                    server.writes.append((path, kind, body))
                    stored = server._write(path, new)
                self._send(200, stored)

        return Handler
