#!/usr/bin/env bash
# Where the CPU goes, from a perf profile of the worker (scripts/bench.sh fleet with
# HEALTHPROBE_BENCH_PERF=1): every sampled function put in one group by its name, printed
# as a Markdown table.
#
#   scripts/perf-table.sh target/bench/perf-fleet-one-10000-1.data
set -euo pipefail
data="${1:?usage: scripts/perf-table.sh PERF_DATA}"
perf report -i "$data" --no-children --sort dso,sym --stdio -g none 2>/dev/null \
    | awk '
    /^#/ || NF < 3 { next }
    {
        pct = $1; sub("%", "", pct)
        line = $0
        group = "other (our code, serde, sqlx, …)"
        if (line ~ /\[k\]/) {
            if (line ~ /finish_task_switch|try_to_wake_up|_raw_spin_unlock_irqrestore|schedule|futex|select_task_rq|enqueue_task|dequeue_task|pick_next|update_curr|psi_/) group = "kernel: scheduling, futex wake-ups"
            else if (line ~ /epoll|ep_poll|ep_item|eventfd/) group = "kernel: epoll"
            else group = "kernel: TCP send/receive, syscalls"
        }
        else if (line ~ /malloc|free|realloc|unlink_chunk|consolidate|_int_|tcache|mi_|_mi_/) group = "allocator (malloc, free)"
        else if (line ~ /memmove|memcpy|memset|memcmp/) group = "memcpy/memmove (moving futures, buffers)"
        else if (line ~ /tracing|Instrumented|sharded|Registry|FormattedFields|fmt_layer|Layered/) group = "tracing (spans per probe)"
        else if (line ~ /url::|idna|percent_encoding|try_uri|Uri|uri::/) group = "URL parsing (url, idna, http::Uri)"
        else if (line ~ /hyper_util|pool::|Checkout|Connector/) group = "hyper-util client and pool"
        else if (line ~ /hyper::/) group = "hyper HTTP/1 (parse, encode, dispatch)"
        else if (line ~ /reqwest/) group = "reqwest (request building, futures)"
        else if (line ~ /header|HeaderMap|HeaderValue|http::/) group = "headers (http crate)"
        else if (line ~ /tokio::(runtime|task|sync|util)|JoinSet|idle_notified|waker|Waker|AtomicWaker|Semaphore|semaphore/) group = "tokio: tasks, wakers, scheduler, sync"
        else if (line ~ /tokio::(time|io|net)|clock_gettime|vdso|ScheduledIo|Sleep|timer/) group = "tokio: timers, I/O readiness, clock"
        else if (line ~ /bytes::/) group = "bytes (buffers)"
        else if (line ~ /sqlx|postgres|tokio_postgres/) group = "sqlx (listing, snapshots)"
        else if (line ~ /hashbrown|sip::|hash_one|Hasher/) group = "hash maps (per-game state)"
        share[group] += pct
    }
    END {
        for (g in share) printf "%.1f\t%s\n", share[g], g
    }' | sort -rn | awk -F'\t' 'BEGIN { print "| where | share of the worker CPU |"; print "| --- | ---: |" } { printf "| %s | %s %% |\n", $2, $1 }'
