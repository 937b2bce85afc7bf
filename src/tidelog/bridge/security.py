"""Client settings for the bridges: TLS, credentials, pass-through options; secrets never shown.

Owns the reading of settings from three places, in this order (a later one wins):
1. environment variables (the way to hand over a secret without it showing anywhere):
     TIDELOG_NATS_TOKEN, TIDELOG_NATS_USER, TIDELOG_NATS_PASSWORD, TIDELOG_NATS_CREDS (a .creds
     file), TIDELOG_NATS_CA, TIDELOG_NATS_CERT, TIDELOG_NATS_KEY (PEM files);
     TIDELOG_KAFKA_SASL_MECHANISM, TIDELOG_KAFKA_SASL_USERNAME, TIDELOG_KAFKA_SASL_PASSWORD,
     TIDELOG_KAFKA_CA, TIDELOG_KAFKA_CERT, TIDELOG_KAFKA_KEY;
2. a settings file (`--config FILE`, `config=` in Python) of `key=value` lines ('#' comments):
     for Kafka any librdkafka setting (passed through as is: `sasl.password=...` lives in a file,
     not on a command line); for NATS the keys token, user, password, creds, ca, cert, key,
     token_file, password_file;
3. nothing else: an address holding credentials is refused (tidelog.bridge.address).
Values are never put into an error message or a log line: errors name the setting and the file.
A NATS `.creds` file is checked here, before a client library reads it (check_creds): a user JWT
block and a user nkey seed block, well formed; nats-py loops forever on a file without a JWT
block and fails with a bare TypeError on one without a seed.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from typing import Optional

__all__ = ["read_config", "nats_options", "kafka_options", "check_creds", "SECRET_KEYS"]

NATS_KEYS = ("token", "user", "password", "creds", "ca", "cert", "key",
             "token_file", "password_file")
NATS_ENV = {"token": "TIDELOG_NATS_TOKEN", "user": "TIDELOG_NATS_USER",
            "password": "TIDELOG_NATS_PASSWORD", "creds": "TIDELOG_NATS_CREDS",
            "ca": "TIDELOG_NATS_CA", "cert": "TIDELOG_NATS_CERT", "key": "TIDELOG_NATS_KEY"}
KAFKA_ENV = {"sasl.mechanism": "TIDELOG_KAFKA_SASL_MECHANISM",
             "sasl.username": "TIDELOG_KAFKA_SASL_USERNAME",
             "sasl.password": "TIDELOG_KAFKA_SASL_PASSWORD",
             "ssl.ca.location": "TIDELOG_KAFKA_CA",
             "ssl.certificate.location": "TIDELOG_KAFKA_CERT",
             "ssl.key.location": "TIDELOG_KAFKA_KEY"}
# librdkafka settings naming a file ("probe": ssl.ca.location's search of the system's CAs)
_KAFKA_FILES = ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location",
                "ssl.crl.location", "ssl.keystore.location")
# settings whose values are secrets: never shown, whatever the message
SECRET_KEYS = frozenset({"token", "password", "sasl.password", "ssl.key.password",
                         "sasl.oauthbearer.client.secret", "ssl.keystore.password"})


def read_config(path: Optional[str]) -> dict[str, str]:
    """key=value lines of a settings file (None: no file). ValueError names the file and line
    number of a malformed line, never its content (it may hold a secret)."""
    if path is None:
        return {}
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"config must be a path to a file of key=value lines, not "
                        f"{type(path).__name__}")
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"config {os.fspath(path)!r} line {n}: expected key=value")
            out[key.strip()] = value.strip()
    return out


def _read_secret_file(setting: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise ValueError(f"{setting}: cannot read {path!r}: {e.strerror}") from None


# the blocks of a .creds file as nats-py reads them: the line after BEGIN is the value (nsc
# writes 5 dashes around BEGIN, 6 around END)
_JWT_BLOCK = re.compile(r"-{3,}BEGIN NATS USER JWT-{3,}\n(\S+)\n-{3,}END NATS USER JWT-{3,}")
_SEED_BLOCK = re.compile(r"-{3,}BEGIN USER NKEY SEED-{3,}\n(\S+)\n-{3,}END USER NKEY SEED-{3,}")
_SEED_BYTE, _USER_BYTE = 18 << 3, 20 << 3      # nkeys' prefix bytes: 'S' (seed), 'U' (user)


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0), the checksum of an nkey."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def check_creds(path: str) -> None:
    """ValueError naming `path` and what is wrong when it is not a NATS user credentials file:
    a user JWT (three base64url parts, a JSON payload with a subject) and a user nkey seed
    (base32, role 'user', checksum right). Never shows the file's content."""
    where = f"creds {path!r}"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ValueError(f"{where}: cannot read it: {why}") from None
    jwt, seed = _JWT_BLOCK.search(text), _SEED_BLOCK.search(text)
    if jwt is None or seed is None:
        missing = ("NATS USER JWT" if jwt is None else "USER NKEY SEED")
        raise ValueError(f"{where} is not a NATS credentials file: it has no -----BEGIN "
                         f"{missing}----- block (the value on the line after it)")
    parts = jwt.group(1).split(".")
    try:
        if len(parts) != 3 or not all(parts):
            raise ValueError
        claims = json.loads(_b64url(parts[1]))
        if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
            raise ValueError
    except (ValueError, binascii.Error):         # JSONDecodeError and bad base64 are these
        raise ValueError(f"{where}: its user JWT is malformed") from None
    text_seed = seed.group(1)
    try:
        raw = base64.b32decode(text_seed + "=" * (-len(text_seed) % 8))
    except (ValueError, binascii.Error):
        raw = b""
    role = ((raw[0] & 7) << 5 | (raw[1] & 248) >> 3) if len(raw) == 36 else -1
    if (len(raw) != 36 or raw[0] & 248 != _SEED_BYTE or role != _USER_BYTE
            or _crc16(raw[:34]) != int.from_bytes(raw[34:], "little")):
        raise ValueError(f"{where}: its nkey seed is not a valid user seed")


def nats_options(config: Mapping[str, str],
                 environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The NATS settings (keys of NATS_KEYS, files read) from the environment and `config`."""
    opts = {k: environ[v] for k, v in NATS_ENV.items() if environ.get(v)}
    for key, value in config.items():
        if key not in NATS_KEYS:
            raise ValueError(f"config: unknown NATS setting {key!r} (one of "
                             f"{', '.join(NATS_KEYS)})")
        opts[key] = value
    for name in ("token", "password"):
        f = opts.pop(f"{name}_file", None)
        if f is not None:
            opts[name] = _read_secret_file(f"{name}_file", f)
    for name in ("creds", "ca", "cert", "key"):
        if name in opts and not os.path.isfile(opts[name]):
            raise ValueError(f"{name}: no such file {opts[name]!r}")
    if "creds" in opts:
        check_creds(opts["creds"])
    if "password" in opts and "user" not in opts:
        raise ValueError("a NATS password is set but no user (TIDELOG_NATS_USER or user=)")
    return opts


# confluent-kafka's own settings, read in Python (callbacks, a logger, a bool, a dict), not
# librdkafka's: a key=value file can only give them a string, which confluent-kafka refused
# with a TypeError or AttributeError (a traceback), or took (a string `logger` replaced the one
# that keeps librdkafka's lines off stderr)
_PYTHON_LEVEL = frozenset({"error_cb", "throttle_cb", "stats_cb", "oauth_cb", "logger",
                           "on_delivery", "on_commit", "delivery.report.only.error",
                           "default.topic.config", "dr_cb", "dr_msg_cb", "log_cb"})


def kafka_options(config: Mapping[str, str],
                  environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """librdkafka settings from the environment and `config` (passed through, but for
    confluent-kafka's Python-level settings: ValueError)."""
    for key in config:
        if key in _PYTHON_LEVEL:
            raise ValueError(f"{key}: a setting of confluent-kafka's Python layer (a callback, "
                             f"a logger or a Python value), which a key=value file cannot give; "
                             f"tidelog sets what it needs")
    opts = {k: environ[v] for k, v in KAFKA_ENV.items() if environ.get(v)}
    opts.update(config)
    # librdkafka says only "ssl.ca.location failed: ... BIO lib" of a file that is not there
    for key in _KAFKA_FILES:
        path = opts.get(key)
        if path and path != "probe" and not os.path.exists(path):
            raise ValueError(f"{key}: no such file {path!r}")
    return opts
