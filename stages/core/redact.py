"""Storage credentials never leave the process: ``redact`` masks them in anything printed, logged or written.

Known secrets are collected from where credentials come in: secret-named keys of ``LUM_STORAGE_OPTIONS`` and
``LUM_SPARK_CONF`` (``AWS_SECRET_ACCESS_KEY``, ``fs.s3a.secret.key``, ...), environment variables with such
names (``AWS_SESSION_TOKEN``, ``AZURE_STORAGE_ACCOUNT_KEY``, ...), and the content of the files named by
``GOOGLE_APPLICATION_CREDENTIALS`` and secret-named ``*_FILE`` variables (``AWS_WEB_IDENTITY_TOKEN_FILE``).
Each one is masked wherever it occurs, also JSON-, repr- or URL-escaped; ``key=value`` / ``"key": "value"``
pairs with a secret-looking key, URL passwords (``s3://id:pw@host``) and signed-URL parameters (``sig=``,
``X-Amz-Signature=``) are masked even when the value is not known.

Used at the edges, never inside the stages: the CLI's error lines, tracebacks and JSON summaries, log records
(``install_log_redaction``), the daily task summaries and the Airflow task logs (``secret_values`` goes to
Airflow's own masker in dags/lum_daily.py), and the bench report files.
"""

from __future__ import annotations

import json
import logging
import os
import re
from functools import lru_cache
from typing import Any
from urllib.parse import quote

MASK = "***"
MIN_SECRET_LEN = 6  # shorter values (flags, regions, "true") are never treated as known secrets

# A name (env var, storage option, Spark conf key, JSON key) that holds a credential.
_SECRET_NAME = re.compile(
    r"secret|password|passwd|token|credential|private[_.-]?key|access[_.-]?key|account[_.-]?key|storage[_.-]?key"
    r"|(?:^|[_.-])sas(?:[_.-]|$)|signature|connection[_.-]?string", re.IGNORECASE)
# Secret-named variables whose value is a file path: the file's content is the secret, not the path.
_FILE_NAMES = re.compile(r"(?:_FILE|_PATH)$|^GOOGLE_APPLICATION_CREDENTIALS$", re.IGNORECASE)

# key=value, key: value, "key": "value" with a secret-looking key (also Rust's Debug form `key: Some("v")`).
_PAIR = re.compile(
    r"""(?P<key>["']?\b[\w.-]*(?:secret|password|passwd|session[_.-]?token|access[_.-]?token|refresh[_.-]?token"""
    r"""|bearer[_.-]?token|sas[_.-]?token|private[_.-]?key(?:[_.-]?id)?|access[_.-]?key(?:[_.-]?id)?"""
    r"""|account[_.-]?key|storage[_.-]?key|client[_.-]?secret|connection[_.-]?string)["']?\s*[:=]\s*(?:Some\()?)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,;)}\]"']+)""", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)(?P<value>[^@\s/]+)(?=@)")
_URL_PARAM = re.compile(
    r"(?P<head>[?&](?:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature"
    r"|x-goog-credential|token)=)(?P<value>[^&\s\"'#]+)", re.IGNORECASE)

_JSON_SECRET_KEYS = ("private_key", "private_key_id", "client_secret", "refresh_token")


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def _json_secrets(text: str) -> list[str]:
    """Secret-named string values of a JSON object (a service-account key file or option value)."""
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return []
    if not isinstance(value, dict):
        return []
    return [str(v) for k, v in value.items()
            if isinstance(v, str) and (k in _JSON_SECRET_KEYS or _is_secret_name(str(k)))]


def _read_small(path: str) -> str | None:
    try:
        if os.path.getsize(path) > 1_000_000:
            return None
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _sources(environ: dict[str, str]) -> list[tuple[str, str]]:
    """(name, value) pairs that may hold a credential: env vars, storage options, Spark conf entries."""
    out = [(k, v) for k, v in environ.items() if k not in ("LUM_STORAGE_OPTIONS", "LUM_SPARK_CONF")]
    try:
        options = json.loads(environ.get("LUM_STORAGE_OPTIONS") or "{}")
    except ValueError:
        options = {}
    if isinstance(options, dict):
        out += [(str(k), str(v)) for k, v in options.items()]
    for pair in (environ.get("LUM_SPARK_CONF") or "").split(";"):
        key, sep, value = pair.partition("=")
        if sep:
            out.append((key.strip(), value.strip()))
    return out


@lru_cache(maxsize=8)
def _collect(env_items: tuple[tuple[str, str], ...], files: tuple[tuple[str, int, int], ...]) -> tuple[str, ...]:
    """Known secrets of one environment (``files``: the credential files' (path, mtime, size), a cache key)."""
    found: set[str] = set()
    for name, value in _sources(dict(env_items)):
        if _is_secret_name(name) and not _FILE_NAMES.search(name):
            found.add(value.strip())
            found.update(_json_secrets(value))
    for path, _, _ in files:
        content = (_read_small(path) or "").strip()
        if content:
            found.add(content)
            found.update(_json_secrets(content))
    return tuple(sorted(s for s in found if len(s) >= MIN_SECRET_LEN))


def secret_values(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Every known secret of this process (see module doc); cached per environment and credential file."""
    environ = dict(os.environ if environ is None else environ)
    files = []
    for name, path in environ.items():
        if _FILE_NAMES.search(name) and _is_secret_name(name) and path:
            try:
                st = os.stat(path)
            except OSError:
                continue
            files.append((path, st.st_mtime_ns, st.st_size))
    return _collect(tuple(sorted(environ.items())), tuple(sorted(files)))


def _forms(secret: str) -> set[str]:
    """The ways a secret can be spelled in output: raw, JSON/repr/URL-escaped, and each line of a PEM block."""
    forms = {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1], quote(secret, safe="")}
    if "\n" in secret:
        forms.update(line.strip() for line in secret.splitlines() if len(line.strip()) >= 16)
    return {f for f in forms if len(f) >= MIN_SECRET_LEN}


def redact(text: Any, secrets: tuple[str, ...] | None = None) -> str:
    """``text`` (made a string) with every known secret and every secret-looking pair masked as ``***``."""
    out = str(text)
    for secret in secrets if secrets is not None else secret_values():
        for form in sorted(_forms(secret), key=len, reverse=True):
            if form in out:
                out = out.replace(form, MASK)
    out = _PAIR.sub(lambda m: m.group("key") + _masked_value(m.group("value")), out)
    out = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, out)
    return _URL_PARAM.sub(lambda m: m.group("head") + MASK, out)


def _masked_value(value: str) -> str:
    if value == MASK or value.strip("\"'") == MASK:
        return value
    if value[:1] in "\"'" and value[-1:] == value[:1] and len(value) >= 2:
        return value[0] + MASK + value[0]
    return MASK


def redact_obj(value: Any, secrets: tuple[str, ...] | None = None) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings) with every string passed through ``redact``."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {redact(k, secrets) if isinstance(k, str) else k: redact_obj(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_obj(v, secrets) for v in value]
    if type(value) is tuple:
        return tuple(redact_obj(v, secrets) for v in value)
    return value


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """``record`` with its rendered message and traceback text redacted (the message is frozen, args
    cleared, only when something was masked)."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: leave it for logging's own error report
        return record
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


_INSTALLED = False


def install_log_redaction() -> None:
    """Redact every log record of this process when it is created, whatever handler later writes it
    (the CLI's stderr, Airflow's task log, pytest's capture). Idempotent."""
    global _INSTALLED
    if _INSTALLED:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(previous(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    _INSTALLED = True
