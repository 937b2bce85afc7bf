"""Issue 15, security: a nats-server that requires TLS (a CA and a server certificate made by
this test with `openssl`) and a token or a user/password. Right credentials through environment
variables or a --config file get in; wrong or missing credentials and an untrusted certificate
each give exit 2 and one line naming the cause, and the secret shows nowhere: not in the line,
not in the command line of the running process.

NATS `.creds` files: a nats-server in operator mode (decentralized JWT auth: an operator, a system
account and an account with JetStream, their nkeys and JWTs made here with the nkeys package)
lets in only a user whose JWT an account it knows signed, holding that user's nkey seed.

Kafka SSL and SASL: librdkafka's mock cluster has neither (no SaslHandshake, no TLS listener) and
Tansu 0.6.0 cannot let anyone in with them (see bridgekit.KafkaGate), so a gate requiring TLS and
SASL/PLAIN stands in front of a Tansu broker; Tansu's own --authentication (SCRAM) refuses every
login, which still tests a refusal by a real broker."""
import base64
import hashlib
import json
import os
import subprocess
import sys
import time

import nkeys
import pytest

import tidelog

from bridgekit import (BIN, KafkaGate, Tansu, cli, free_port, kafka_read, spawn_cli,  # noqa: F401
                       wait_port)

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
    e = {k: v for k, v in os.environ.items() if not k.startswith(("TIDELOG_NATS_",
                                                                  "TIDELOG_KAFKA_"))}
    e.update(kw)
    return e


def one_line_error(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tidelog: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert TOKEN not in r.stderr + r.stdout and PASSWORD not in r.stderr + r.stdout



def assert_same_100(path_a, path_b):
    """Both logs hold the same 100 values (a mirror out, then an ingest back in)."""
    with tidelog.open(str(path_a), readonly=True) as a, \
            tidelog.open(str(path_b), readonly=True) as b:
        assert len(b) == len(a) == 100
        assert all(bytes(b.read(i).value) == bytes(a.read(i).value) for i in range(100))

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


# --- NATS .creds (JWT + nkey seed) ------------------------------------------------------------

def nkey(prefix):
    """A fresh nkey pair of the role `prefix` (nkeys.PREFIX_BYTE_*)."""
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(issuer, subject, name, nats, **extra):
    """A NATS JWT (v2): claims about `subject` (a public key) signed by `issuer`'s nkey."""
    claims = {"iat": int(time.time()), "iss": issuer.public_key.decode(), "name": name,
              "sub": subject, "nats": dict(nats, version=2), **extra}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(
        claims, sort_keys=True).encode()).digest()).decode().rstrip("=")
    head = b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(issuer.sign(f'{head}.{body}'.encode()))}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
             "wildcards": True, "conn": -1, "leaf": -1}


def user_jwt(account, user, **extra):
    return make_jwt(account, user.public_key.decode(), "alice",
                    {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1,
                     "payload": -1}, **extra)


def creds_text(jwt, seed):
    return (f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            f"************************* IMPORTANT *************************\n"
            f"NKEY Seed printed below can be used to sign and prove identity.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n")


@pytest.fixture
def creds_server(tmp_path):
    """A nats-server with JetStream that trusts one operator; yields (port, account key pair,
    path of a good .creds file, that file's seed and JWT)."""
    op, sys_acc, acc = (nkey(nkeys.PREFIX_BYTE_OPERATOR), nkey(nkeys.PREFIX_BYTE_ACCOUNT),
                        nkey(nkeys.PREFIX_BYTE_ACCOUNT))
    op_jwt = make_jwt(op, op.public_key.decode(), "op", {"type": "operator"})
    sys_jwt = make_jwt(op, sys_acc.public_key.decode(), "SYS",
                       {"type": "account", "limits": UNLIMITED})
    acc_jwt = make_jwt(op, acc.public_key.decode(), "app", {
        "type": "account", "default_permissions": {"pub": {}, "sub": {}},
        "limits": dict(UNLIMITED, mem_storage=-1, disk_storage=-1, streams=-1, consumer=-1)})
    user = nkey(nkeys.PREFIX_BYTE_USER)
    good = tmp_path / "alice.creds"
    jwt, seed = user_jwt(acc, user), user.seed.decode()
    good.write_text(creds_text(jwt, seed))
    port = free_port()
    conf = tmp_path / "server.conf"
    conf.write_text(f"""
listen: "127.0.0.1:{port}"
jetstream {{ store_dir: "{tmp_path / 'js'}" }}
operator: "{op_jwt}"
system_account: {sys_acc.public_key.decode()}
resolver: MEMORY
resolver_preload: {{
  {sys_acc.public_key.decode()}: "{sys_jwt}"
  {acc.public_key.decode()}: "{acc_jwt}"
}}
""")
    proc = subprocess.Popen([os.path.join(BIN, "nats-server"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    yield {"port": port, "account": acc, "creds": str(good), "seed": seed, "jwt": jwt}
    proc.terminate()
    proc.wait(10)


def no_secret(r, *secrets):
    for s in secrets:
        assert s not in r.stdout + r.stderr


def test_creds_file_round_trip(creds_server, log_path, tmp_path):
    """A .creds file from TIDELOG_NATS_CREDS, or named by creds= in a --config file, gets a
    mirror in and an ingest back out: the same 100 records."""
    url = f"nats://127.0.0.1:{creds_server['port']}/SEC"
    r = cli("mirror", log_path, url, "--create",
            env=env(TIDELOG_NATS_CREDS=creds_server["creds"]), timeout=60)
    assert r.returncode == 0 and "mirrored 100 records" in r.stdout, r.stderr
    (tmp_path / "nats.conf").write_text(f"creds={creds_server['creds']}\n")
    r = cli("ingest", url, str(tmp_path / "in"), "--config", str(tmp_path / "nats.conf"),
            env=env(), timeout=60)
    assert r.returncode == 0 and "ingested 100 records" in r.stdout, r.stderr
    assert_same_100(log_path, tmp_path / "in")
    no_secret(r, creds_server["seed"], creds_server["jwt"])


def test_wrong_or_missing_creds(creds_server, log_path, tmp_path):
    """Well-formed credentials the server does not accept, and none at all: exit 2, one line
    saying the server refused them, no seed and no JWT in it."""
    url = f"nats://127.0.0.1:{creds_server['port']}/SEC"
    acc, user = creds_server["account"], nkey(nkeys.PREFIX_BYTE_USER)
    stranger = nkey(nkeys.PREFIX_BYTE_ACCOUNT)          # an account the server never heard of
    cases = {
        "unknown-account": (user_jwt(stranger, user), user.seed.decode()),
        "other-seed": (user_jwt(acc, user), nkey(nkeys.PREFIX_BYTE_USER).seed.decode()),
        "expired": (user_jwt(acc, user, exp=int(time.time()) - 60), user.seed.decode()),
        "forged": (user_jwt(acc, user)[:-8] + "AAAAAAAA", user.seed.decode()),
    }
    for name, (jwt, seed) in cases.items():
        path = tmp_path / f"{name}.creds"
        path.write_text(creds_text(jwt, seed))
        r = cli("mirror", log_path, url, "--create", env=env(TIDELOG_NATS_CREDS=str(path)),
                timeout=60)
        one_line_error(r, "refused the credentials")
        no_secret(r, seed, jwt, creds_server["seed"])
    one_line_error(cli("mirror", log_path, url, "--create", env=env(), timeout=60),
                   "refused the credentials")


def garbled(creds, seed, jwt):
    """Ways a .creds file can be damaged: name -> its text."""
    account_seed = nkey(nkeys.PREFIX_BYTE_ACCOUNT).seed.decode()
    flipped = seed[:20] + ("A" if seed[20] != "A" else "B") + seed[21:]
    return {
        "seed-only": creds.split("\n\n", 1)[1],      # first: nats-py hung on it for good
        "empty": "",
        "jwt-only": creds.split("\n\n", 1)[0] + "\n",
        "seed-checksum": creds.replace(seed, flipped),
        "seed-truncated": creds.replace(seed, seed[:-3]),
        "account-seed": creds.replace(seed, account_seed),
        "jwt-two-parts": creds.replace(jwt, jwt.rsplit(".", 1)[0]),
        "jwt-not-json": creds.replace(jwt, "e30." + b64url(b"{nope") + ".c2ln"),
        "blank-line-after-begin": creds.replace("JWT-----\n", "JWT-----\n\n"),
    }


def test_garbled_creds_file(creds_server, log_path, tmp_path):
    """A damaged .creds file is refused before connecting: exit 2, one line naming the file and
    what is wrong, nothing of its content. Without the check nats-py looped forever on a file
    without a JWT block (seed-only) and failed with a bare TypeError on one without a seed."""
    url = f"nats://127.0.0.1:{creds_server['port']}/SEC"
    good = open(creds_server["creds"]).read()
    for name, text in garbled(good, creds_server["seed"], creds_server["jwt"]).items():
        path = tmp_path / f"{name}.creds"
        path.write_text(text)
        r = cli("mirror", log_path, url, "--create", env=env(TIDELOG_NATS_CREDS=str(path)),
                timeout=60)
        one_line_error(r, f"creds {str(path)!r}")
        no_secret(r, creds_server["seed"], creds_server["jwt"], creds_server["seed"][:12])
    r = cli("mirror", log_path, url, env=env(TIDELOG_NATS_CREDS=str(tmp_path / "none.creds")),
            timeout=60)
    one_line_error(r, "creds: no such file")


def test_creds_without_nkeys_names_the_extra(creds_server, log_path):
    """nats-py reads .creds files with the nkeys package (its `nkeys` extra, which tidelog[nats]
    asks for): without it the error says what to install, not a bare ModuleNotFoundError."""
    url = f"nats://127.0.0.1:{creds_server['port']}/SEC"
    code = ("import sys; sys.modules['nkeys'] = None; sys.argv[0] = 'tidelog'; "
            "from tidelog.cli import main; main()")
    r = subprocess.run([sys.executable, "-c", code, "mirror", log_path, url, "--create"],
                       capture_output=True, text=True, timeout=60,
                       env=env(TIDELOG_NATS_CREDS=creds_server["creds"]))
    one_line_error(r, "nkeys", "tidelog[nats]")


# --- Kafka: SSL and SASL ------------------------------------------------------------------------

KAFKA_PASSWORD = "kpw-5d17e90c3b"


@pytest.fixture
def kafka_gate(pki):
    """TLS (the pki CA's server certificate) and SASL/PLAIN alice/KAFKA_PASSWORD."""
    g = KafkaGate(cert=os.path.join(pki["dir"], "server.pem"),
                  key=os.path.join(pki["dir"], "server.key"),
                  user="alice", password=KAFKA_PASSWORD)
    yield g
    g.stop()


def kafka_env(pki, password=KAFKA_PASSWORD, ca="ca", **kw):
    e = dict(TIDELOG_KAFKA_SASL_MECHANISM="PLAIN", TIDELOG_KAFKA_SASL_USERNAME="alice", **kw)
    if password is not None:
        e["TIDELOG_KAFKA_SASL_PASSWORD"] = password
    if ca is not None:
        e["TIDELOG_KAFKA_CA"] = pki[ca]
    return env(**e)


def test_kafka_sasl_ssl_round_trip(kafka_read, kafka_gate, pki, log_path, tmp_path):
    """SASL/PLAIN over TLS: settings from environment variables get a mirror in; from a --config
    file of librdkafka settings (the password in the file) an ingest back out: same records."""
    url = kafka_gate.url("SEC")
    r = cli("mirror", log_path, url, "--create", env=kafka_env(pki), timeout=120)
    assert r.returncode == 0 and "mirrored 100 records" in r.stdout, r.stderr
    (tmp_path / "kafka.conf").write_text(
        f"security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\nsasl.username=alice\n"
        f"sasl.password={KAFKA_PASSWORD}\nssl.ca.location={pki['ca']}\n")
    r = cli("ingest", url, str(tmp_path / "in"), "--config", str(tmp_path / "kafka.conf"),
            env=env(), timeout=120)
    assert r.returncode == 0 and "ingested 100 records" in r.stdout, r.stderr
    assert_same_100(log_path, tmp_path / "in")
    assert KAFKA_PASSWORD not in r.stdout + r.stderr


def kafka_error(r, *words):
    one_line_error(r, *words)
    assert KAFKA_PASSWORD not in r.stdout + r.stderr


def test_kafka_wrong_password(kafka_gate, pki, log_path):
    """A wrong SASL password: exit 2, one line saying the cluster refused the credentials (not
    only 'Broker transport failure'), and the password nowhere."""
    wrong = "x" + KAFKA_PASSWORD
    r = cli("mirror", log_path, kafka_gate.url("SEC"), "--create",
            env=kafka_env(pki, password=wrong), timeout=120)
    kafka_error(r, "refused the credentials")
    assert wrong not in r.stdout + r.stderr


def test_kafka_missing_credentials(kafka_gate, pki, log_path):
    """A user but no password: librdkafka refuses the settings (exit 2, one line naming the
    setting). No SASL at all against a cluster that requires it: exit 2, one line (librdkafka
    only sees the connection closed, so the line cannot say more than that)."""
    r = cli("mirror", log_path, kafka_gate.url("SEC"), "--create",
            env=kafka_env(pki, password=None), timeout=120)
    kafka_error(r, "sasl.password")
    r = cli("mirror", log_path, kafka_gate.url("SEC"), "--create",
            env=env(TIDELOG_KAFKA_CA=pki["ca"]), timeout=120)
    kafka_error(r, "cannot reach Kafka")


def test_kafka_untrusted_certificate(kafka_gate, pki, log_path):
    """The broker's certificate signed by another CA than the one given, or no CA given (the
    system's do not know the test's): exit 2, one line saying the certificate is not trusted."""
    for ca in ("other", None):
        r = cli("mirror", log_path, kafka_gate.url("SEC"), "--create",
                env=kafka_env(pki, ca=ca), timeout=120)
        kafka_error(r, "not trusted")


def test_kafka_missing_ca_file(kafka_gate, pki, log_path, tmp_path):
    """A CA (or certificate, or key) file that is not there: exit 2, one line naming the setting
    and the file (librdkafka said only 'ssl.ca.location failed: ... BIO lib')."""
    none = str(tmp_path / "none.pem")
    for var, key in (("TIDELOG_KAFKA_CA", "ssl.ca.location"),
                     ("TIDELOG_KAFKA_CERT", "ssl.certificate.location"),
                     ("TIDELOG_KAFKA_KEY", "ssl.key.location")):
        e = kafka_env(pki)
        e[var] = none
        for cmd in (("mirror", log_path, kafka_gate.url("SEC")),
                    ("ingest", kafka_gate.url("SEC"), str(tmp_path / "in"))):
            kafka_error(cli(*cmd, env=e, timeout=120), f"{key}: no such file {none!r}")


def test_kafka_scram_refused_by_a_real_broker(log_path):
    """Tansu with --authentication: a SCRAM login is refused by the broker itself (this build
    stores no SCRAM credential, so every login is): exit 2, one line naming the refusal."""
    t = Tansu("--authentication")
    try:
        for mech in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
            r = cli("mirror", log_path, t.url("SEC"), "--create", timeout=120,
                    env=env(TIDELOG_KAFKA_SASL_MECHANISM=mech, TIDELOG_KAFKA_SASL_USERNAME="alice",
                            TIDELOG_KAFKA_SASL_PASSWORD=KAFKA_PASSWORD))
            kafka_error(r, "refused the credentials")
    finally:
        t.stop()


def test_kafka_password_echoed_by_the_broker_is_not_shown(pki, log_path):
    """A broker whose refusal quotes the password it got: the error line still holds the
    reason and not the password (tidelog blanks the secrets of its settings in what librdkafka
    reports)."""
    g = KafkaGate(cert=os.path.join(pki["dir"], "server.pem"),
                  key=os.path.join(pki["dir"], "server.key"), user="alice",
                  password=KAFKA_PASSWORD, echo=True)
    try:
        wrong = "y" + KAFKA_PASSWORD
        r = cli("mirror", log_path, g.url("SEC"), "--create",
                env=kafka_env(pki, password=wrong), timeout=120)
        kafka_error(r, "refused the credentials", "(got alice/***)")
        assert wrong not in r.stdout + r.stderr
    finally:
        g.stop()


KEY_PASSWORD = "kkp-0b6e2f9a41"


def test_kafka_client_certificate(pki, log_path, tmp_path):
    """Mutual TLS: a broker that wants a client certificate signed by the CA. The certificate
    and its key (encrypted; ssl.key.password in a --config file) get a mirror in; without them,
    or with a wrong key password: exit 2, one line, no key password in it."""
    d = pki["dir"]
    openssl("req", "-newkey", "rsa:2048", "-subj", "/CN=tidelog-client", "-passout",
            f"pass:{KEY_PASSWORD}", "-keyout", str(tmp_path / "client.key"), "-out",
            str(tmp_path / "client.csr"), cwd=d)
    openssl("x509", "-req", "-in", str(tmp_path / "client.csr"), "-CA", "ca.pem", "-CAkey",
            "ca.key", "-CAcreateserial", "-days", "2", "-out", str(tmp_path / "client.pem"), cwd=d)
    g = KafkaGate(cert=os.path.join(d, "server.pem"), key=os.path.join(d, "server.key"),
                  client_ca=pki["ca"])
    try:
        url = g.url("MTLS")
        conf = tmp_path / "kafka.conf"
        conf.write_text(f"ssl.key.password={KEY_PASSWORD}\n")
        certs = dict(TIDELOG_KAFKA_CA=pki["ca"], TIDELOG_KAFKA_CERT=str(tmp_path / "client.pem"),
                     TIDELOG_KAFKA_KEY=str(tmp_path / "client.key"))
        r = cli("mirror", log_path, url, "--create", "--config", str(conf), env=env(**certs),
                timeout=120)
        assert r.returncode == 0 and "mirrored 100 records" in r.stdout, r.stderr
        r = cli("mirror", log_path, url, "--name", "m2", env=env(TIDELOG_KAFKA_CA=pki["ca"]),
                timeout=120)
        one_line_error(r, "requires a client certificate")
        conf.write_text(f"ssl.key.password=x{KEY_PASSWORD}\n")
        r = cli("mirror", log_path, url, "--name", "m3", "--config", str(conf),
                env=env(**certs), timeout=120)
        one_line_error(r, "Kafka settings", "ssl.key")
        assert KEY_PASSWORD not in r.stdout + r.stderr
    finally:
        g.stop()


def test_nats_client_certificate(pki, log_path, tmp_path):
    """Mutual TLS with NATS: a server that verifies client certificates (signed by the CA) and
    wants a token. The certificate and key from the environment get a mirror out and an ingest
    back; without them, or with a certificate another CA signed: exit 2 and one line naming the
    cause, no token in it."""
    d = pki["dir"]
    for name, ca in (("client", "ca"), ("stranger", "other")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=tidelog-{name}",
                "-keyout", str(tmp_path / f"{name}.key"), "-out", str(tmp_path / f"{name}.csr"),
                cwd=d)
        openssl("x509", "-req", "-in", str(tmp_path / f"{name}.csr"), "-CA", f"{ca}.pem",
                "-CAkey", f"{ca}.key", "-CAcreateserial", "-days", "2",
                "-out", str(tmp_path / f"{name}.pem"), cwd=d)
    port = free_port()
    conf = tmp_path / "server.conf"
    conf.write_text(f"""
listen: "127.0.0.1:{port}"
jetstream {{ store_dir: "{tmp_path / 'js'}" }}
tls {{ cert_file: "{d}/server.pem", key_file: "{d}/server.key", ca_file: "{pki['ca']}",
      verify: true }}
authorization {{ token: "{TOKEN}" }}
""")
    proc = subprocess.Popen([os.path.join(BIN, "nats-server"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        url = f"tls://127.0.0.1:{port}/MTLS"
        base = dict(TIDELOG_NATS_TOKEN=TOKEN, TIDELOG_NATS_CA=pki["ca"])
        mine = dict(base, TIDELOG_NATS_CERT=str(tmp_path / "client.pem"),
                    TIDELOG_NATS_KEY=str(tmp_path / "client.key"))
        r = cli("mirror", log_path, url, "--create", env=env(**mine), timeout=60)
        assert r.returncode == 0 and "mirrored 100 records" in r.stdout, r.stderr
        r = cli("ingest", url, str(tmp_path / "in"), env=env(**mine), timeout=60)
        assert r.returncode == 0 and "ingested 100 records" in r.stdout, r.stderr
        assert_same_100(log_path, tmp_path / "in")
        one_line_error(cli("mirror", log_path, url, "--name", "m2", env=env(**base),
                           timeout=60), "may require a client certificate")
        stranger = dict(base, TIDELOG_NATS_CERT=str(tmp_path / "stranger.pem"),
                        TIDELOG_NATS_KEY=str(tmp_path / "stranger.key"))
        # the refusal is an alert (unknown CA), or, when the server's reset on the client's
        # unread first request overtakes it, the connection lost: both name the certificate
        one_line_error(cli("mirror", log_path, url, "--name", "m3", env=env(**stranger),
                           timeout=60), "trust the client certificate")
    finally:
        proc.terminate()
        proc.wait(10)


def test_nats_connection_lost_after_a_client_certificate_names_it():
    """The TLS 1.3 refusal of a client certificate that the reset overtook (the client hears
    only the connection lost, test_nats_client_certificate at random): the error says the
    server may not trust the certificate; without a certificate, that one may be required."""
    from tidelog.bridge import nats as bnats
    lost = ConnectionResetError("Connection lost")
    why = "ConnectionResetError: Connection lost"
    assert "may not trust the client certificate" in bnats._tls_hint(lost, why, True)
    assert "may require a client certificate" in bnats._tls_hint(lost, why, False)
    alert = "TLS: TLSV1_ALERT_UNKNOWN_CA"
    assert "does not trust the client certificate" in bnats._tls_hint(
        Exception("tlsv1 alert unknown ca"), alert, True)
    assert bnats._tls_hint(TimeoutError(), "TimeoutError", True) == "TimeoutError"
