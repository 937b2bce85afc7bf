"""Issue 15: bridge addresses, settings files and the optional extras, without a broker."""
import subprocess
import sys

import pytest

import tidelog
import tidelog.bridge
from tidelog.bridge import Address, parse_address
from tidelog.bridge.security import kafka_options, nats_options, read_config


def test_kafka_addresses():
    a = parse_address("kafka://h1:9092,10.0.0.2:9093/my.topic-1?partition=7")
    assert a == Address("kafka", ("h1:9092", "10.0.0.2:9093"), "my.topic-1", partition=7)
    assert parse_address("kafka://h:1/t").partition == 0
    assert parse_address("kafkas://h:1/t").tls
    assert str(parse_address("kafka://h:1/t?partition=3")) == "kafka://h:1/t?partition=3"


def test_nats_addresses():
    a = parse_address("nats://127.0.0.1:4222/ORDERS?subject=orders.*.eu")
    assert (a.system, a.name, a.subject, a.tls) == ("nats", "ORDERS", "orders.*.eu", False)
    assert parse_address("tls://[::1]:4222/S").tls
    assert parse_address("nats://h:1/S").subject is None


@pytest.mark.parametrize("bad, word", [
    ("", "expected"), ("kafka:/h:1/t", "expected"), ("http://h:1/t", "scheme"),
    ("kafka://h:1", "topic"), ("kafka://h:1/", "topic"), ("kafka://h:1/a b", "topic"),
    ("kafka://h:1/" + "t" * 250, "topic"), ("kafka://h:1/t?partition=x", "partition"),
    ("kafka://h:1/t?partition=-1", "partition"), ("kafka://h:1/t?p=1", "parameter"),
    ("kafka://h:0/t", "port"), ("kafka://h:65536/t", "port"), ("kafka://:1/t", "HOST:PORT"),
    ("kafka://h:1,/t", "HOST:PORT"), ("nats://h:1/a.b", "stream"), ("nats://h:1/a*", "stream"),
    ("nats://h:1/S?subject=", "subject"), ("nats://h:1/S?subject=a b", "subject"),
    ("nats://h:1/S?partition=1", "parameter"),
])
def test_malformed_addresses(bad, word):
    with pytest.raises(ValueError, match=word):
        parse_address(bad)


def test_credentials_in_an_address_are_refused_and_not_echoed():
    for text in ("nats://u:sekrit@h:1/S", "kafka://sekrit@h:1/t"):
        with pytest.raises(ValueError) as e:
            parse_address(text)
        assert "sekrit" not in str(e.value) and "credentials" in str(e.value)


def test_not_a_string():
    with pytest.raises(TypeError, match="target"):
        parse_address(b"nats://h:1/S", argument="target")
    with pytest.raises(TypeError, match="name"):
        tidelog.bridge.mirror("x", "nats://h:1/S", name=5)
    with pytest.raises(ValueError, match="name"):
        tidelog.bridge.mirror("x", "nats://h:1/S", name="a/b")


def test_settings(tmp_path, monkeypatch):
    f = tmp_path / "c.conf"
    f.write_text("# c\n\nsasl.password = s3 = x\nacks=all\n")
    assert read_config(str(f)) == {"sasl.password": "s3 = x", "acks": "all"}
    env = {"TIDELOG_KAFKA_SASL_USERNAME": "u", "TIDELOG_KAFKA_SASL_PASSWORD": "p"}
    assert kafka_options({"acks": "1"}, env) == {"sasl.username": "u", "sasl.password": "p",
                                                 "acks": "1"}
    (tmp_path / "pw").write_text("hunter2\n")
    assert nats_options({"user": "a", "password_file": str(tmp_path / "pw")}, {}) == \
        {"user": "a", "password": "hunter2"}
    with pytest.raises(ValueError, match="no user"):
        nats_options({}, {"TIDELOG_NATS_PASSWORD": "x"})
    with pytest.raises(ValueError, match="no such file"):
        nats_options({"ca": str(tmp_path / "missing.pem")}, {})


@pytest.mark.parametrize("module, extra, url", [("nats", "nats", "nats://127.0.0.1:1/S"),
                                                ("confluent_kafka", "kafka",
                                                 "kafka://127.0.0.1:1/t")])
def test_missing_extra_is_named(tmp_path, module, extra, url):
    """The client libraries are imported only when used; without them the error names the
    extra to install (simulated: the module is made unimportable in a child)."""
    log_path = str(tmp_path / "log")
    tidelog.open(log_path).close()
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            f"import tidelog.bridge, tidelog.cli\n"
            f"assert {module!r} not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            f"tidelog.cli.main(['mirror', {log_path!r}, {url!r}])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"pip install 'tidelog[{extra}]'" in r.stderr and "Traceback" not in r.stderr


def test_importing_the_package_does_not_import_the_clients():
    r = subprocess.run([sys.executable, "-c", "import sys, tidelog, tidelog.cli, tidelog.bridge;"
                        "print(sorted(m for m in ('nats', 'confluent_kafka') if m in "
                        "sys.modules))"], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stderr


def test_ingest_resume_scan(tmp_path, monkeypatch):
    """The position comes from the last record carrying the header, even behind records
    appended by someone else; past the scan limit the ingester refuses instead of starting
    over."""
    import importlib
    bingest = importlib.import_module("tidelog.bridge.ingest")   # (the package's ingest() shadows it)
    with tidelog.open(str(tmp_path / "l")) as log:
        assert bingest.last_position(log, "nats-sequence") is None
        log.append(b"a", headers=[("nats-sequence", b"41"), ("nats-sequence", b"42")])
        log.append_batch([b"other"] * 5)
        assert bingest.last_position(log, "nats-sequence") == 42
        monkeypatch.setattr(bingest, "SCAN_LIMIT", 3)
        with pytest.raises(tidelog.TidelogError, match="last 3 records"):
            bingest.last_position(log, "nats-sequence")


@pytest.mark.parametrize("bad, word", [
    ("kafka://h:1/t?partition=\u00b2", "partition must be"),   # a digit to isdigit(), not int()
    ("kafka://h:1/t?partition=\u0663", "partition must be"),   # an Arabic-Indic 3 was taken as 3
    ("nats://h:1/S\x00", "stream"), ("nats://h:1/%07S", "stream"),  # control characters
    ("nats://h:1/S?subject=a.>.b", "subject"),                   # '>' only as the last token
    ("kafka://h:1/t?partition=1&partition=2", "twice"),          # the last one silently won
    ("nats://h:1/S?subject=a&subject=b", "twice"),
])
def test_malformed_addresses_attacked(bad, word):
    with pytest.raises(ValueError, match=word):
        parse_address(bad)


def test_a_mirror_refuses_a_wildcard_subject(tmp_path):
    """A mirror publishing to `w.*` was acknowledged and exited 0; a wildcard is a filter for
    ingest, never a subject to publish to. Refused before any connection."""
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        log.append(b"x")
    for subject in ("w.*", "w.>"):
        with pytest.raises(ValueError, match="wildcard"):
            tidelog.bridge.mirror(log_path, f"nats://127.0.0.1:1/W?subject={subject}")
