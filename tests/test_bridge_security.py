"""Issue 15, security: a nats-server that requires TLS (a CA and a server certificate made by
this test with `openssl`) and a token or a user/password. Right credentials through environment
variables or a --config file get in; wrong or missing credentials and an untrusted certificate
each give exit 2 and one line naming the cause, and the secret shows nowhere: not in the line,
not in the command line of the running process."""
import os
import subprocess
import time

import pytest

import tidelog

from bridgekit import BIN, cli, free_port, spawn_cli, wait_port

TOKEN = "tok-3f9a1c77d2"
PASSWORD = "pw-8e41b02a5c"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)
    return os.path.join(d, f"{name}.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    ca = make_ca(d, "ca")
    other = make_ca(d, "other")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr", cwd=d)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem", cwd=d)
    return {"dir": d, "ca": ca, "other": other}


def start_server(tmp_path, pki, auth):
    port = free_port()
    conf = tmp_path / "server.conf"
    conf.write_text(f"""
listen: "127.0.0.1:{port}"
jetstream {{ store_dir: "{tmp_path / 'js'}" }}
tls {{ cert_file: "{pki['dir']}/server.pem", key_file: "{pki['dir']}/server.key" }}
authorization {{ {auth} }}
""")
    proc = subprocess.Popen([os.path.join(BIN, "nats-server"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return port, proc


@pytest.fixture
def token_server(tmp_path, pki):
    port, proc = start_server(tmp_path, pki, f'token: "{TOKEN}"')
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def user_server(tmp_path, pki):
    port, proc = start_server(tmp_path, pki,
                              f'users: [{{user: "alice", password: "{PASSWORD}"}}]')
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def log_path(tmp_path):
    p = str(tmp_path / "log")
    with tidelog.open(p) as log:
        log.append_batch([b"%d" % i for i in range(100)])
    return p


def env(**kw):
    e = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_NATS_")}
    e.update(kw)
    return e


def one_line_error(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tidelog: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert TOKEN not in r.stderr + r.stdout and PASSWORD not in r.stderr + r.stdout


def test_token_over_tls(token_server, pki, log_path, tmp_path):
    url = f"tls://127.0.0.1:{token_server}/SEC"
    r = cli("mirror", log_path, url, "--create",
            env=env(TIDELOG_NATS_TOKEN=TOKEN, TIDELOG_NATS_CA=pki["ca"]), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "mirrored 100 records" in r.stdout
    # and back in, with the token from a file named in a --config file
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "nats.conf").write_text(f"token_file={tmp_path / 'token'}\nca={pki['ca']}\n")
    r = cli("ingest", url, str(tmp_path / "in"), "--config", str(tmp_path / "nats.conf"),
            env=env(), timeout=60)
    assert r.returncode == 0 and "ingested 100 records" in r.stdout, r.stderr


def test_wrong_or_missing_token(token_server, pki, log_path):
    url = f"tls://127.0.0.1:{token_server}/SEC"
    one_line_error(cli("mirror", log_path, url, "--create",
                       env=env(TIDELOG_NATS_TOKEN="wrong-" + TOKEN, TIDELOG_NATS_CA=pki["ca"]),
                       timeout=60), "refused the credentials")
    one_line_error(cli("mirror", log_path, url, "--create",
                       env=env(TIDELOG_NATS_CA=pki["ca"]), timeout=60),
                   "refused the credentials")


def test_untrusted_certificate(token_server, pki, log_path):
    url = f"tls://127.0.0.1:{token_server}/SEC"
    one_line_error(cli("mirror", log_path, url, "--create",
                       env=env(TIDELOG_NATS_TOKEN=TOKEN, TIDELOG_NATS_CA=pki["other"]),
                       timeout=60), "not trusted")
    one_line_error(cli("mirror", log_path, url, "--create",
                       env=env(TIDELOG_NATS_TOKEN=TOKEN), timeout=60), "not trusted")


def test_user_password(user_server, pki, log_path, tmp_path):
    url = f"tls://127.0.0.1:{user_server}/SEC"
    r = cli("mirror", log_path, url, "--create", timeout=60,
            env=env(TIDELOG_NATS_USER="alice", TIDELOG_NATS_PASSWORD=PASSWORD,
                    TIDELOG_NATS_CA=pki["ca"]))
    assert r.returncode == 0, r.stderr
    one_line_error(cli("mirror", log_path, url, timeout=60,
                       env=env(TIDELOG_NATS_USER="alice", TIDELOG_NATS_PASSWORD="x" + PASSWORD,
                               TIDELOG_NATS_CA=pki["ca"])), "refused the credentials")
    # the secret is nowhere in the running process's command line
    p = spawn_cli("mirror", log_path, url, "--follow",
                  env=env(TIDELOG_NATS_USER="alice", TIDELOG_NATS_PASSWORD=PASSWORD,
                          TIDELOG_NATS_CA=pki["ca"]))
    lock = os.path.join(log_path, "bridges", "mirror-mirror.lock")
    try:
        deadline = time.monotonic() + 30          # running: it holds its lock (signals handled)
        while time.monotonic() < deadline:
            if os.path.exists(lock) and open(lock).read().strip() == str(p.pid):
                break
            time.sleep(0.05)
        with open(f"/proc/{p.pid}/cmdline", "rb") as f:
            assert PASSWORD.encode() not in f.read()
    finally:
        p.terminate()
        p.wait(30)
        p.stderr.close()
    assert p.returncode == 0


def test_settings_file_errors_name_the_line_not_the_value(log_path, tmp_path):
    (tmp_path / "bad.conf").write_text(f"# comment\n{PASSWORD}\n")
    one_line_error(cli("mirror", log_path, "nats://127.0.0.1:1/S", "--config",
                       str(tmp_path / "bad.conf")), "line 2")
    (tmp_path / "unk.conf").write_text(f"secret={PASSWORD}\n")
    one_line_error(cli("mirror", log_path, "nats://127.0.0.1:1/S", "--config",
                       str(tmp_path / "unk.conf")), "unknown NATS setting 'secret'")
