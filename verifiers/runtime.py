"""What verifiers may use beyond a spec and an answer, built once per process and handed in once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from verifiers.webhook import WebhookPolicy, webhook_client


@dataclass(frozen=True)
class VerifierRuntime:
    """The process's means of judging, for the verifier types that need more than their spec
    (`VerifierType.judge_with`, `VerifierType.admit`): the operator's webhook policy, the HTTP client
    webhooks are posted with, and the sleep their retries back off with. A verifier that asks a model
    to judge would keep its client here too.

    The server builds one from its settings (`r3.reflect_retry.verifier_runtime`) and hands it to its
    `Reflector`; the trainer and the gate build theirs the same way. The default runtime allows no
    webhook host at all.
    """

    webhooks: WebhookPolicy = field(default_factory=WebhookPolicy)
    http_client: Callable[[], httpx.AsyncClient] = webhook_client  # a new client, closed by its user
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # seconds
