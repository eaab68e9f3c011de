#!/usr/bin/env python3
"""Where the CPU goes by task, from a perf profile of the worker's steady ticks
(scripts/bench.sh fleet with HEALTHPROBE_BENCH_PERF=1): each sample is put under the task
its call stack runs in (a probe task, the tick, the runtime) and, within it, under the first
part of the probe or the tick it reaches. Prints a Markdown table.

    scripts/perf-tasks.py target/bench/perf-fleet-one-10000-1.data

scripts/perf-table.sh groups the same samples by the function at the top of the stack.
"""

import collections
import subprocess
import sys

# (task, part, any of these names in the stack), first match wins.
TICK = [
    ("the running list (sqlx)", ("running_games",)),
    ("the metrics", ("probe_completed", "opentelemetry")),
    ("recording finished probes", ("Worker::apply", "dispatch::<impl healthprobe::worker::Worker>::finished", "Recorder")),
    ("starting probes (a lane, or a spawn before the lanes)", ("Lanes::start", "task::spawn", "JoinSet<T>::spawn")),
    ("waiting for a slot or a finished probe", ("__tokio_select_util", "join_next", "Lanes::next", "Lanes::try_next", "acquire_owned", "sleep_until")),
    ("the per-game table", ("GameTable",)),
]
PROBE = [
    ("building the URL", ("probe_url",)),
    ("the request", ("exchange::request",)),
    ("the pool", ("KeepAlive", "SlotHold")),
    ("the reuse check (recv peek)", ("is_fit_for_reuse",)),
    ("the HTTP/1 handshake", ("handshake",)),
    ("connecting", ("conn::connect",)),
    ("sending (kernel included)", ("__libc_send", "poll_flush")),
    ("reading and parsing the answer", ("__libc_recv", "poll_read")),
    ("hyper's exchange, other", ("exchange",)),
    ("the probe's timer", ("Timeout", "TimerEntry")),
    ("handing the probe back (lanes)", ("UnboundedSender", "chan::Tx")),
]


def stacks(data):
    out = subprocess.run(
        ["perf", "script", "-i", data, "-F", "tid,ip,sym"],
        check=True, capture_output=True, text=True,
    ).stdout
    stack = []
    for line in out.splitlines():
        if line[:1] in (" ", "\t") and line.strip():
            parts = line.split(None, 1)
            stack.append(parts[1] if len(parts) > 1 else "")
            continue
        # A blank line ends a sample, a header line starts one.
        if stack:
            yield stack
        stack = []
    if stack:
        yield stack


def classify(stack):
    def has(*names):
        return any(name in frame for frame in stack for name in names)

    if has("Worker::tick"):
        task, parts = "the tick", TICK
    elif has("spawn_lane", "dispatch::{async_fn#0}::{async_block"):
        # The probe lanes (worker/lanes.rs); before them, a task per probe.
        task, parts = "the probe tasks", PROBE
    elif has("tokio::runtime"):
        return "the runtime", "parking, epoll, task harness"
    else:
        return "other", ""
    for part, names in parts:
        if has(*names):
            return task, part
    return task, "other"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: scripts/perf-tasks.py PERF_DATA")
    tasks = collections.Counter()
    parts = collections.Counter()
    total = 0
    for stack in stacks(sys.argv[1]):
        task, part = classify(stack)
        tasks[task] += 1
        parts[(task, part)] += 1
        total += 1
    if not total:
        sys.exit("no samples")
    print(f"{total} samples\n")
    print("| task | share | part | share |")
    print("| --- | ---: | --- | ---: |")
    for task, count in tasks.most_common():
        first = True
        for (t, part), n in parts.most_common():
            if t != task:
                continue
            head = f"| {task} | {100 * count / total:.1f} % " if first else "| | "
            print(f"{head}| {part} | {100 * n / total:.1f} % |")
            first = False


if __name__ == "__main__":
    main()
