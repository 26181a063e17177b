# Shared by the dom0 and domU /init scripts of the QEMU tier (busybox sh).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/usr/lib/xen-4.17/bin
PEER=/bin/qemu-peer
CPEER=/bin/vchan-peer
PAYLOAD=/payload.bin
PAYLOAD_SHA=$(cat /payload.sha256)

mount_all() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mkdir -p /dev/pts /run /tmp
    mount -t devpts devpts /dev/pts
    mount -t tmpfs tmpfs /run
    mount -t tmpfs tmpfs /tmp
    for m in xen-evtchn xen-privcmd xenfs xen-gntdev xen-gntalloc; do
        insmod /modules/$m.ko || echo "insmod $m failed"
    done
    mkdir -p /proc/xen
    mount -t xenfs xenfs /proc/xen
    # The loopback interface, for the programs that listen on 127.0.0.1 (vchan-proxy's checks).
    ip link set lo up || echo "cannot bring up lo"
}

# result NAME CMD...: run a check, print exactly one PASS/FAIL line for it.
result() {
    name=$1
    shift
    "$@"
    rc=$?
    if [ $rc -eq 0 ]; then echo "PASS $name"; else echo "FAIL $name (exit $rc)"; fi
}

# side NAME CMD...: run the other half of a check in the background; speak only if it fails.
side() {
    name=$1
    shift
    (
        "$@"
        rc=$?
        [ $rc -eq 0 ] || echo "FAIL $name (helper side exit $rc)"
    ) &
}

# recv_check CMD...: CMD (a program or a function) writes the received stream to stdout; compare its sha256 with the payload's.
recv_check() {
    "$@" > /tmp/received || return 1
    got=$(sha256sum < /tmp/received | cut -d' ' -f1)
    rm -f /tmp/received
    [ "$got" = "$PAYLOAD_SHA" ] || { echo "sha256 $got, expected $PAYLOAD_SHA"; return 1; }
}

# kill_when_flowing MARKER PID: SIGKILL PID once it has created MARKER (data is flowing).
kill_when_flowing() {
    for _ in $(seq 1 600); do
        [ -e "$1" ] && break
        sleep 0.1
    done
    [ -e "$1" ] || { echo "no data flowed before the kill"; kill -9 "$2"; return 1; }
    sleep 0.5
    kill -9 "$2"
}

# The transfers of the cat tests, all through vchan-cat:
#   send_server CLIENT PORT FILE   serve CLIENT, send FILE, close
#   recv_client SERVER PORT        connect to SERVER, what arrives goes to stdout
#   recv_server CLIENT PORT        serve CLIENT, what arrives goes to stdout
#   send_client SERVER PORT FILE   connect to SERVER, send FILE, close
send_server() { timeout 120 vchan-cat -N -l "$1" "$2" < "$3" > /dev/null; }
recv_client() { timeout 120 vchan-cat --wait 90 "$1" "$2" < /dev/null; }
recv_server() { timeout 120 vchan-cat -l "$1" "$2" < /dev/null; }
send_client() { timeout 120 vchan-cat -N --wait 90 "$1" "$2" < "$3" > /dev/null; }

# The benchmark cells of the real-Xen tier (vchan-perf's peer protocol): "IMPL PORT RING MODE MSG
# COUNT", run by dom0 as servers and by the domU as clients, in this order. Figures under emulation
# say nothing about speed; they show the benchmark runs on real Xen, for ours and for C.
BENCH_CELLS="ours 40 65536 stream 4096 8388608
c 41 65536 stream 4096 8388608
ours 42 1048576 stream 65536 16777216
c 43 1048576 stream 65536 16777216
ours 44 65536 pingpong 64 300
c 45 65536 pingpong 64 300"

# bench_prog IMPL: the command of the Rust or the C peer (its arguments follow).
bench_prog() {
    if [ "$1" = ours ]; then echo "vchan-perf peer"; else echo vchan-perf-c; fi
}

# bench_client IMPL SERVER PORT RING MODE MSG COUNT: run one client and print its figures as a
# "BENCH IMPL RING MSG <result line>" line for `vchan-perf report`.
bench_client() {
    line=$(timeout 300 $(bench_prog "$1") client "$2" "$3" "$5" "$6" "$7") || return 1
    echo "BENCH $1 $4 $6 $line"
}

# http_fetch ENDPOINT: fetch /file from an http-server example through conduit-vchan, four
# requests at once, and check the body is the payload. The server may still be starting (under
# emulation that takes seconds): try again, a few times.
http_fetch() {
    for _ in 1 2 3 4 5 6; do
        if recv_check timeout 120 http-client "$1" /file --parallel 4; then
            return 0
        fi
        sleep 2
    done
    return 1
}

# wait_key PATH: wait (up to 180 s) until xenstore holds PATH.
wait_key() {
    for _ in $(seq 1 900); do
        xenstore-read "$1" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "no $1 after 180 s"
    return 1
}

# dropin CMD...: run CMD on the drop-in libxenvchan (tests/qemu/run.sh puts it in /dropin).
dropin() { LD_LIBRARY_PATH=/dropin "$@"; }

# The vchan-socket-proxy checks carry the first 512 KiB of the payload: the proxy serves with the
# 1024- and 2048-byte rings in the control page, an event per ring-full each way, which under
# emulation on a busy machine takes minutes for 3 MiB.
SMALL_PAYLOAD=/payload-small.bin
head -c 524288 $PAYLOAD >$SMALL_PAYLOAD
SMALL_SHA=$(sha256sum <$SMALL_PAYLOAD | cut -d' ' -f1)

# recv_check_small CMD...: recv_check against the small payload.
recv_check_small() {
    "$@" >/tmp/received || return 1
    got=$(sha256sum </tmp/received | cut -d' ' -f1)
    rm -f /tmp/received
    [ "$got" = "$SMALL_SHA" ] || { echo "sha256 $got, expected $SMALL_SHA"; return 1; }
}
