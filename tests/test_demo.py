"""`tidelog demo` (issue 17, item 7): a given PATH is kept and the demo says how to inspect it;
the subscriber table's numbers are explained (the second wave); the non-deterministic machine is
introduced as the counter-example it is, and the demo fails if it is not caught."""
import re
import shlex

import tidelog
from tidelog import demo as demo_module

HOLDS = re.compile(r"the log now holds ([\d,]+) records: (?:([\d,]+) from earlier runs, )?"
                   r"([\d,]+) ingested above(?: \(([\d,]+) in batches \+ ([\d,]+) one per call\))?"
                   r", and the second wave of ([\d,]+)")
TAIL = re.compile(r"live tail: 'indexer' followed the log from offset ([\d,]+) and read ([\d,]+) "
                  r"records, the second wave included")


def numbers(pattern, text):
    m = pattern.search(text)
    assert m, text
    return [None if g is None else int(g.replace(",", "")) for g in m.groups()]


def test_demo_keeps_its_log_and_says_how_to_inspect_it(run, tmp_path):
    path = str(tmp_path / "my demo")
    result = run("demo", path, "--events", 400, "--singles", 40)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    last = result.stdout.strip().splitlines()[-1]
    assert last == f"log: {path} (kept): inspect it with `tidelog info {shlex.quote(path)}`"
    info = run(*shlex.split(last.split("`")[1])[1:])           # the command, as printed
    assert info.exit_code == 0 and "records:        540" in info.stdout
    with tidelog.open(path, readonly=True) as log:
        assert len(log) == 400 + 40 + 100


def test_demo_explains_the_subscribers_numbers(run, tmp_path):
    path = tmp_path / "demo"
    result = run("demo", path, "--events", 2000, "--singles", 300)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    out = result.stdout
    holds, earlier, ingested, batches, singles, wave = numbers(HOLDS, out)
    assert (earlier, batches, singles, wave) == (None, 2000, 300, 2000 // 4)
    assert holds == ingested + wave == 2000 + 300 + 500
    start, read = numbers(TAIL, out)
    assert (start, read) == (0, holds)                  # all of it, the wave included
    table = out[out.index("subscribers: two named cursors"):out.index("the log now holds")]
    assert f"{holds:,}" in table                        # the number the table shows...
    assert out.index("┃ subscriber") < out.index("the log now holds")   # ... explained below it

    again = run("demo", path, "--events", 40, "--singles", 0).stdout
    holds2, earlier2, ingested2, batches2, singles2, wave2 = numbers(HOLDS, again)
    assert (earlier2, ingested2, batches2, wave2) == (holds, 40, None, 10)
    assert holds2 == holds + 40 + 10
    assert numbers(TAIL, again) == [holds, 50]          # 'indexer' resumes where it committed


def test_demo_introduces_the_counter_example(run, tmp_path):
    result = run("demo", tmp_path / "demo", "--events", 300, "--singles", 0)
    out = result.stdout
    intro = out.index("counter-example: FlakyCounter breaks the rule on purpose")
    verdict = out.index("determinism: FlakyCounter (reads state outside the log): NOT "
                        "deterministic")
    honest = out.index("determinism: ClickCounter: deterministic")
    assert honest < intro < verdict


def test_demo_fails_when_the_counter_example_is_not_caught(run, tmp_path, monkeypatch):
    class Honest(demo_module.ClickCounter):
        calls = 0
    monkeypatch.setattr(demo_module, "FlakyCounter", Honest)
    result = run("demo", tmp_path / "demo", "--events", 300, "--singles", 0)
    assert result.exit_code == 1
    assert "the counter-example was not caught" in result.stderr
