"""Network (loopback): a fake Hugging Face Hub speaking the HTTP endpoints that huggingface_hub's
`HfApi.create_repo` and `HfApi.create_commit` call, so a push runs through the real client.

    POST /api/repos/create                            create a repo (409 if it exists)
    POST /api/validate-yaml                           check a README's front matter parses
    POST /api/{type}s/{namespace}/{name}/preupload/{revision}
                                                      every file "regular": inline in the commit,
                                                      so neither LFS batch nor Xet storage is needed
    POST /api/{type}s/{namespace}/{name}/commit/{revision}
                                                      NDJSON: a header, then base64 files

Every request is recorded (method, path, headers, body) and repos keep their files in memory.
Requests without `Authorization: Bearer <token>` are refused with 401, as the Hub does for writes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import yaml


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeRepo:
    repo_type: str
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)


Reply = tuple[int, dict[str, Any]]


def _front_matter(content: str) -> Any:
    if not content.startswith("---\n"):
        return {}
    end = content.find("\n---", 4)
    return yaml.safe_load(content[4:end]) if end != -1 else None


class FakeHub:
    """The Hub's write API in memory; `requests` and `repos` are what tests assert on."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.requests: list[Recorded] = []
        self.repos: dict[str, FakeRepo] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def repo(self, repo_id: str, repo_type: str = "dataset") -> FakeRepo:
        return self.repos[f"{repo_type}s/{repo_id}"]

    def handle(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return 401, {"error": "Invalid username or password."}
            path = request.path.split("?", 1)[0]
            if request.method == "POST" and path == "/api/repos/create":
                return self._create(json.loads(request.body))
            if request.method == "POST" and path == "/api/validate-yaml":
                return self._validate(json.loads(request.body))
            parts = path.split("/")  # '', 'api', 'datasets', ns, name, action, revision
            if request.method == "POST" and len(parts) == 7 and parts[1] == "api":
                key = "/".join(parts[2:5])
                if key not in self.repos:
                    return 404, {"error": "Repository not found"}
                if parts[5] == "preupload":
                    return self._preupload(json.loads(request.body))
                if parts[5] == "commit":
                    return self._commit(self.repos[key], request.body)
            return 404, {"error": f"fake hub: no route {request.method} {path}"}

    def _create(self, payload: dict[str, Any]) -> Reply:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}"
        key = f"{repo_type}s/{repo_id}"
        if key in self.repos:
            return 409, {"error": "You already created this repo", "url": self._url(key)}
        private = payload.get("visibility") == "private"
        self.repos[key] = FakeRepo(repo_type=repo_type, repo_id=repo_id, private=private)
        return 200, {"url": self._url(key), "name": repo_id, "id": repo_id}

    def _url(self, key: str) -> str:
        return f"{self.endpoint}/{key.removeprefix('models/')}"

    def _validate(self, payload: dict[str, Any]) -> Reply:
        try:
            meta = _front_matter(payload["content"])
        except yaml.YAMLError as error:
            return 400, {"errors": [{"message": f"invalid YAML: {error}"}], "warnings": []}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata is not a mapping"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def _preupload(self, payload: dict[str, Any]) -> Reply:
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
            for f in payload["files"]
        ]
        return 200, {"files": files, "commitOid": "0" * 40}

    def _commit(self, repo: FakeRepo, body: bytes) -> Reply:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header, operations = lines[0], lines[1:]
        if header.get("key") != "header":
            return 400, {"error": "first NDJSON line must be the header"}
        for op in operations:
            value = op["value"]
            if op["key"] != "file" or value.get("encoding") != "base64":
                return 400, {"error": f"fake hub: unsupported operation {op['key']}"}
            repo.files[value["path"]] = base64.b64decode(value["content"])
        oid = hashlib.sha1(body).hexdigest()
        repo.commits.append(header["value"]["summary"])
        key = f"{repo.repo_type}s/{repo.repo_id}"
        return 200, {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self._url(key)}/commit/{oid}",
            "pullRequestUrl": None,
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], hub: FakeHub) -> None:
        super().__init__(address, _Handler)
        self.hub = hub


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        assert isinstance(self.server, _Server)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, reply = self.server.hub.handle(Recorded(self.command, self.path, headers, body))
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows failures, not every request."""
