"""tidelog.bridge._rdkc attacked as a hostile caller would: threads racing its lifecycle, and
what it holds ahead of the caller. Each test here failed (a crash, a hang, or what it names)
before the fix it guards; what would kill the interpreter runs in a child process, so a crash
is a failed test, not a lost run."""
import os
import subprocess
import sys
import textwrap

from bridgekit import kafka_mock  # noqa: F401


def run(code, tmp_path, timeout=120):
    """`code` in a child interpreter with this one's path: (returncode, stdout, stderr)."""
    code = f"import sys\nsys.path[:0] = {sys.path!r}\n" + textwrap.dedent(code)
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code],
                       capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    return r.returncode, r.stdout, r.stderr


def test_close_while_another_thread_is_in_assign_raises_not_crashes(kafka_mock, tmp_path):
    """assign() released the GIL (stopping the pump) without marking the Consumer busy: a
    close() from another thread meanwhile destroyed the handle, and assign() then gave
    rd_kafka_assign a NULL handle (a segfault), the two also joining the pump's thread twice.
    Now close() raises as it does while take() waits, and the handle stays whole."""
    code = f"""
        import threading, time
        from tidelog.bridge import _rdkc
        assert _rdkc.load() is None
        raised = 0
        for _ in range(5):
            c = _rdkc.Consumer({{"bootstrap.servers": {kafka_mock.bootstrap!r},
                                 "group.id": "t"}}, "race", 0)
            c.assign(0)
            c.take(1, 0.05, True, [], [], [], [], [])       # (the pump running)
            errs = []
            def loop():
                try:
                    for i in range(3000):
                        c.assign(i % 7)
                except ValueError as e:                      # closed between two calls
                    errs.append(e)
            t = threading.Thread(target=loop)
            t.start()
            time.sleep(0.05)
            while t.is_alive():
                try:
                    c.close()
                    break
                except RuntimeError as e:
                    assert "another thread" in str(e), e
                    raised += 1
            t.join()
            c.close()
        print("ok", raised > 0)
    """
    rc, out, err = run(code, tmp_path)
    assert rc == 0 and out.split() == ["ok", "True"], (rc, out, err[-2000:])
