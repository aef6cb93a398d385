"""Keys Lambda: provisioning API for a SaaS backend, invoked directly with IAM (``lambda:InvokeFunction``).

Event: ``{"action": "create_key" | "list_keys" | "get_key" | "revoke_key" | "rotate_key" | "update_key",
"request_id": "<optional caller id for idempotent retries>", ...fields of the action}``.

Response: ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": {"code": ..., "message": ...}}``.
Bad input never raises (the invocation succeeds with ``ok: false``).

Mutating actions that carry a ``request_id`` are idempotent (Powertools idempotency, DynamoDB): a
retry with the same action and request_id returns the first response (the same key id and
plaintext for ``create_key``) and changes nothing; the same request_id with a different payload is
refused (``code: "conflict"``). Requests are validated before anything is recorded, so a bad
payload writes nothing at all.

The plaintext key is never stored: for ``create_key``/``rotate_key`` with a ``request_id`` the key's
secret is derived from the stack's derivation secret and the request's ids
(:mod:`quotagate.key_derivation`); the idempotency record holds the response without ``api_key``,
which is derived again for the reply (first answer and replays alike).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from quotagate import key_derivation
from quotagate.logic.exceptions import KeysError
from quotagate.logic.keys_models import REQUEST_ID_RE
from quotagate.logic.keys_service import (
    ACTIONS,
    KEY_ISSUING_ACTIONS,
    MUTATING_ACTIONS,
    Command,
    KeysService,
)

if TYPE_CHECKING:
    from quotagate.key_derivation import KeySecretSource

logger = Logger(service="quotagate-keys")

# The idempotency record holds the function's response without the plaintext key (re-derived on a
# replay). A retry is expected within minutes; after 10 minutes the record no longer answers (the
# same request_id then starts a new request).
IDEMPOTENCY_EXPIRY_SECONDS = 600
IDEMPOTENCY_KEY_PREFIX = "quotagate-keys"
API_KEY_FIELD = "api_key"


class _Runtime:
    """Everything that needs boto3, built on first use (in tests: after moto is active)."""

    def __init__(self) -> None:
        from aws_lambda_powertools.utilities.idempotency import (
            DynamoDBPersistenceLayer,
            IdempotencyConfig,
            idempotent_function,
        )

        from quotagate import aws, tables
        from quotagate.dal.keys_store import DynamoKeyStore

        self.service = KeysService(DynamoKeyStore())
        self.idempotency_config = IdempotencyConfig(
            event_key_jmespath="[action, request_id]",
            # The whole request: the same request_id with a different payload is refused.
            payload_validation_jmespath="@",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=IDEMPOTENCY_EXPIRY_SECONDS,
        )
        persistence = DynamoDBPersistenceLayer(table_name=tables.IDEMPOTENCY.name(), boto_config=aws.config())
        service = self.service

        def run_mutation(
            *, request: dict[str, Any], command: Command, key_secret: KeySecretSource | None
        ) -> dict[str, Any]:
            result = service.run(command, key_secret=key_secret)
            # What is returned is what the idempotency record stores: never the plaintext key.
            return {k: v for k, v in result.items() if k != API_KEY_FIELD}

        self.run_idempotent = idempotent_function(
            run_mutation,
            data_keyword_argument="request",
            persistence_store=persistence,
            config=self.idempotency_config,
            key_prefix=IDEMPOTENCY_KEY_PREFIX,
        )


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def _get_runtime() -> _Runtime:
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = _Runtime()
    return _runtime


def reset() -> None:
    """Forget the cached clients (tests, and the local gateway after its moto backend changes)."""
    global _runtime
    with _runtime_lock:
        _runtime = None


def _valid_request_id(value: Any) -> bool:
    return isinstance(value, str) and REQUEST_ID_RE.fullmatch(value) is not None


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    action = event.get("action") if isinstance(event, dict) else None
    request_id = event.get("request_id") if isinstance(event, dict) else None
    log_keys = {
        "action": action if isinstance(action, str) and action in ACTIONS else "unknown",
        "request_id": request_id if _valid_request_id(request_id) else None,
    }
    logger.append_keys(**log_keys)
    try:
        response = _handle(event, context)
        if response["ok"]:
            result = response["result"]
            logger.info("keys request done", extra={"key_id": result.get("key_id")})
        else:
            logger.info("keys request refused", extra={"error_code": response["error"]["code"]})
        return response
    finally:
        logger.remove_keys(list(log_keys))


def _handle(event: Any, context: Any) -> dict[str, Any]:
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyValidationError,
    )

    try:
        runtime = _get_runtime()
        # Validation first (the request models, request_id included), with no I/O on the stores:
        # a bad request records nothing anywhere.
        command = runtime.service.parse(event)
        request_id = event.get("request_id")
        if command.action in MUTATING_ACTIONS and request_id is not None:
            # The remaining time bounds an "in progress" record left by an invocation that died.
            has_clock = hasattr(context, "get_remaining_time_in_millis")
            runtime.idempotency_config.register_lambda_context(context if has_clock else None)  # type: ignore[arg-type]
            if command.action in KEY_ISSUING_ACTIONS:
                master = key_derivation.load_master()
                result = runtime.run_idempotent(
                    request=event,
                    command=command,
                    key_secret=key_derivation.source_for(master, command.action, request_id),
                )
                # The same key for the first answer and for every replay: derived, never stored.
                result = {
                    **result,
                    API_KEY_FIELD: key_derivation.api_key(
                        master, command.action, request_id, result["key_id"], result["version"]
                    ),
                }
            else:
                result = runtime.run_idempotent(request=event, command=command, key_secret=None)
        else:
            result = runtime.service.run(command)
        return {"ok": True, "result": result}
    except KeysError as error:
        return {"ok": False, "error": error.to_dict()}
    except IdempotencyValidationError:
        return _error("conflict", "this request_id was already used with a different request")
    except IdempotencyAlreadyInProgressError:
        return _error("in_progress", "a request with this request_id is in progress; retry shortly")
    except Exception as error:
        # Messages of idempotency errors can embed stored records (which may hold a plaintext key):
        # log only the type. Other errors (AWS client errors) carry no secrets.
        if type(error).__module__.startswith("aws_lambda_powertools.utilities.idempotency"):
            logger.error("keys request failed", extra={"error_type": type(error).__name__})
        else:
            logger.exception("keys request failed", extra={"error_type": type(error).__name__})
        return _error("internal_error", "internal error; retry with the same request_id")
