"""ASGI middleware: refuse a malformed JSON body with 400 `{error, detail}` before BentoML parses it.

BentoML answers a body that fails its input model with a 400 too, but logs it as a server error
with a full traceback; a client's typo is not an incident. This middleware validates the body
against the same pydantic model the API declares (`input_spec`), answers bad ones itself, and
passes good ones on unchanged, so BentoML's own validation never fails.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic import BaseModel, ValidationError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Larger bodies are refused outright (413): 256 users with inline features fit well below it.
MAX_BODY_BYTES = 8 << 20


class RequestValidationMiddleware:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], models: dict[str, type[BaseModel]]):
        self.app = app
        self.models = models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        model = self.models.get(scope.get("path", "")) if scope["type"] == "http" and scope.get("method") == "POST" else None
        if model is None:
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _reply(send, 413, {"error": "body_too_large", "detail": f"request bodies are limited to {MAX_BODY_BYTES} bytes"})
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            model.model_validate_json(body or b"{}")
        except ValidationError as err:
            problems = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in err.errors(include_url=False)]
            await _reply(send, 400, {"error": "malformed_body", "detail": problems})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _reply(send: Send, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
