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
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

__all__ = ["read_config", "nats_options", "kafka_options", "SECRET_KEYS"]

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
    if "password" in opts and "user" not in opts:
        raise ValueError("a NATS password is set but no user (TIDELOG_NATS_USER or user=)")
    return opts


def kafka_options(config: Mapping[str, str],
                  environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """librdkafka settings from the environment and `config` (passed through)."""
    opts = {k: environ[v] for k, v in KAFKA_ENV.items() if environ.get(v)}
    opts.update(config)
    return opts
