#!/bin/bash
# Does MooseFS's mount answer writes that no chunk server has yet?  Run as the harness's `cmd` job:
#
#   sudo TARGETS=mfs_goal3 JOBS=cmd EXTRA_JOBS= REPEAT=1 CMD_JOB="bash $PWD/bench/moosefs_write_ack.sh" \
#       ../shared/bench/moosefs/run.sh
#
# In a fresh directory of the MooseFS mount: fio 4 KiB O_DIRECT random writes at QD1 (every I/O's latency
# logged); after 3 s every chunk server the harness started is stopped (SIGSTOP) for 2 s.  Prints how
# many writes the mount answered after that, before one blocked.  Notes go to /tmp, never to the mount
# (a write there would wait for the stopped servers).  BENCHMARKS.md, "What MooseFS's mount waits for".
set -eu
NOTES=$(mktemp -d /tmp/mfs-write-ack.XXXXXX)
PIDS=$(awk '$1 ~ /^cs[0-9]+$/ {print $2}' "${BASE:-/tmp/mfsbench-ns}/pids")
[ -n "$PIDS" ] || { echo "no chunk server pids in ${BASE:-/tmp/mfsbench-ns}/pids: run this as run.sh's cmd job" >&2; exit 2; }
fio --name=lay --filename=img --size=64m --rw=write --bs=1m --end_fsync=1 >/dev/null
fio --name=w --filename=img --size=64m --rw=randwrite --bs=4k --direct=1 --ioengine=psync --iodepth=1 \
    --time_based --runtime=8 --write_lat_log="$NOTES/w" --log_avg_msec=0 >"$NOTES/fio.out" 2>&1 &
FIO=$!
sleep 3; date +%s.%N >"$NOTES/stop"
for p in $PIDS; do kill -STOP "$p"; done
sleep 2; date +%s.%N >"$NOTES/cont"
for p in $PIDS; do kill -CONT "$p"; done
wait $FIO
python3 - "$NOTES" <<'PY'
import sys
notes = sys.argv[1]
stop, cont = (float(open(f"{notes}/{name}").read()) for name in ("stop", "cont"))
rows = [tuple(int(x) for x in line.split(",")[:2]) for line in open(f"{notes}/w_lat.1.log")]  # (ms, latency ns)
done_ms, lat_ns = max(rows, key=lambda r: r[1])  # the write that waited out the stop
issued_ms = done_ms - lat_ns / 1e6
zero = cont - done_ms / 1e3  # fio's clock on the wall's, taking that write as answered at the resumption
before = [r for r in rows if r[0] <= issued_ms][-200:]
after_stop = [r for r in rows if zero + r[0] / 1e3 > stop and r[0] <= issued_ms]
print(f"{len(rows)} writes; mean latency of the 200 before the blocked one {sum(r[1] for r in before) / len(before) / 1e3:.0f} us")
print(f"the blocked write took {lat_ns / 1e6:.0f} ms; the stop lasted {1e3 * (cont - stop):.0f} ms: it was issued at least "
      f"{1e3 * (cont - stop) - lat_ns / 1e6:.0f} ms after every chunk server stopped")
print(f"writes answered after every chunk server stopped, before one blocked: {len(after_stop)}")
PY
rm -rf "$NOTES"
