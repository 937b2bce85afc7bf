"""Issue 15: the bridges in --follow mode (new records shipped as they become durable; SIGINT /
SIGTERM stop them cleanly with exit 0), a NATS server restarted under a running mirror (one line,
exit 2, and the next start goes on exactly once), and one running bridge per name and log."""
import signal
import subprocess
import sys
import time

import pytest

import tidelog

from bridgekit import (cli, kafka_messages, kafka_mock, kafka_read, nats_messages,  # noqa: F401
                       nats_publish, nats_server)


def wait_for(pred, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def spawn(*args):
    return subprocess.Popen([sys.executable, "-m", "tidelog", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_mirror_follow_ships_new_records_and_stops_on_signal(nats_server, tmp_path, sig):
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        log.append(b"first")
        p = spawn("mirror", log_path, nats_server.url("F"), "--create", "--follow")
        try:
            assert wait_for(lambda: len(nats_messages(nats_server.port, "F")) == 1
                            if _stream_exists(nats_server, "F") else False)
            for i in range(100):
                log.append(b"v%d" % i, headers=[("i", b"%d" % i)])
            log.sync()
            assert wait_for(lambda: len(nats_messages(nats_server.port, "F")) == 101)
        finally:
            p.send_signal(sig)
            out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "mirrored 101 records" in out
    got = nats_messages(nats_server.port, "F")
    assert [int(h["tidelog-offset"]) for _, _, h, _ in got] == list(range(101))


def _stream_exists(srv, name):
    try:
        nats_messages(srv.port, name)
        return True
    except Exception:
        return False


def test_mirror_follow_ships_durable_records_only(kafka_mock, tmp_path):
    """A record appended but not yet durable is not shipped; once synced, it is."""
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path, durability="none") as log:
        log.append(b"a")
        log.sync()
        p = spawn("mirror", log_path, kafka_mock.url("d"), "--create", "--follow")
        try:
            assert wait_for(lambda: len(kafka_messages(kafka_mock.bootstrap, "d")) == 1)
            log.append(b"b")            # not durable: "none" mode syncs only on sync()
            time.sleep(1.5)
            assert len(kafka_messages(kafka_mock.bootstrap, "d")) == 1
            log.sync()
            assert wait_for(lambda: len(kafka_messages(kafka_mock.bootstrap, "d")) == 2)
        finally:
            p.send_signal(signal.SIGTERM)
            out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err


def test_ingest_follow_and_signal(kafka_read, kafka_mock, tmp_path):
    from test_bridge_kafka import produce
    log_path = str(tmp_path / "in")
    produce(kafka_mock.bootstrap, "fi", 0, [(None, b"x", 1, [])])
    p = spawn("ingest", kafka_mock.url("fi"), log_path, "--follow")

    def count():
        try:
            with tidelog.open(log_path, readonly=True) as log:
                return log.durable_offset
        except Exception:
            return 0
    try:
        assert wait_for(lambda: count() == 1)
        produce(kafka_mock.bootstrap, "fi", 0, [(b"k", b"y%d" % i, 2, []) for i in range(50)])
        assert wait_for(lambda: count() == 51)
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "ingested 51 records" in out


def test_nats_restart_under_a_running_mirror(nats_server, tmp_path):
    """The server restarts mid-run: the mirror stops with one line and exit 2 (it never
    resends what a dropped connection may or may not have delivered); the next start resumes
    exactly once from what the server kept."""
    log_path = str(tmp_path / "log")
    with tidelog.open(log_path) as log:
        log.append_batch([b"%d" % i for i in range(2000)])
        p = spawn("mirror", log_path, nats_server.url("R"), "--create", "--follow")
        try:
            assert wait_for(lambda: _stream_exists(nats_server, "R") and
                            len(nats_messages(nats_server.port, "R")) == 2000)
            nats_server.stop()
            nats_server.start()
            for i in range(10):          # a record the mirror sees after the restart
                log.append(b"after %d" % i)
            log.sync()
            out, err = p.communicate(timeout=40)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        assert p.returncode == 2, (out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tidelog: error: ") and \
            "NATS" in lines[0], err
        r = cli("mirror", log_path, nats_server.url("R"))
        assert r.returncode == 0, r.stderr
    got = nats_messages(nats_server.port, "R")
    assert [int(h["tidelog-offset"]) for _, _, h, _ in got] == list(range(2010))


def test_nats_restart_under_a_running_ingest(nats_server, tmp_path):
    """The server restarts under an `ingest --follow` waiting for messages: one line and exit
    2 (the connection never reconnects); the next start ingests what came since, exactly
    once."""
    log_path = str(tmp_path / "in")
    nats_publish(nats_server.port, "IR", "IR", [(b"%d" % i, None) for i in range(1500)])
    p = spawn("ingest", nats_server.url("IR"), log_path, "--follow")
    try:
        assert wait_for(lambda: _durable(log_path) == 1500)
        nats_server.stop()
        nats_server.start()
        out, err = p.communicate(timeout=40)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tidelog: error: ") and "NATS" in lines[0], err
    nats_publish(nats_server.port, "IR", "IR", [(b"after", None)], create=False)
    r = cli("ingest", nats_server.url("IR"), log_path)
    assert r.returncode == 0 and "ingested 1 records" in r.stdout, (r.stdout, r.stderr)
    with tidelog.open(log_path, readonly=True) as log:
        got = [(int(dict(r.headers)["nats-sequence"]), bytes(r.value)) for r in log.cursor()]
    assert got == [(i + 1, b"%d" % i) for i in range(1500)] + [(1501, b"after")]


def test_second_ingester_with_the_same_name_is_refused(nats_server, tmp_path):
    log_path = str(tmp_path / "in")
    nats_publish(nats_server.port, "I", "I", [(b"x", None)])
    p = spawn("ingest", nats_server.url("I"), log_path, "--follow", "--name", "one")
    try:
        assert wait_for(lambda: _durable(log_path) == 1)
        r = cli("ingest", nats_server.url("I"), str(tmp_path / "in"), "--name", "one")
        assert r.returncode == 2
        assert "another ingest named 'one'" in r.stderr or "locked" in r.stderr.lower(), r.stderr
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    assert p.returncode == 0


def _durable(path):
    try:
        with tidelog.open(path, readonly=True) as log:
            return log.durable_offset
    except Exception:
        return 0
