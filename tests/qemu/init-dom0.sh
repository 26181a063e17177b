#!/bin/sh
# /init of dom0 in the QEMU tier: start the Xen toolstack, run the dom0 checks, start a PV domU
# and run the cross-domain checks against it, then power off. One PASS/FAIL line per check.
/bin/busybox --install -s /bin
. /common.sh
mount_all
mkdir -p /run/xenstored /var/lib/xenstored /var/log/xen/console /var/lib/xen /run/xen /run/lock

xenstored --pid-file=/run/xenstored.pid
for _ in $(seq 1 200); do [ -S /run/xenstored/socket ] && break; sleep 0.1; done
xen-init-dom0 || echo "xen-init-dom0 failed"
[ "$(xenstore-read domid 2>/dev/null)" = 0 ] && echo "PASS boot" || echo "FAIL boot (no xenstore)"

# Our xenstore client against the real xenstored (privileged socket connection).
result xenstore-dom0 timeout 60 $PEER xenstore dom0

# Our xs command against the real xenstored, cross-checked with Xen's own xenstore tools.
xs_check() {
    xs write /xs-test/a hello && [ "$(xenstore-read /xs-test/a)" = hello ] || return 1
    xenstore-write /xs-test/b world && [ "$(xs read /xs-test/b)" = world ] || return 2
    xs ls /xs-test | grep -q world || return 3
    xs chmod /xs-test/a n0 r5 && xenstore-ls -p /xs-test | grep '^a ' | grep -q 'n0,r5' || return 4
    timeout 20 xs watch /xs-test -n 2 > /tmp/xs-watch &
    watcher=$!
    sleep 1
    xenstore-write /xs-test/c now
    wait $watcher || return 5
    grep -qx /xs-test/c /tmp/xs-watch || return 6
    xs rm /xs-test && ! xenstore-read /xs-test/a 2>/dev/null || return 7
}
result xs-dom0 xs_check

# Our /dev/xen backends on their own.
result backends-dom0 timeout 60 $PEER devices

# libxenvchan talking to itself inside dom0 (loopback), as the reference for what follows.
side c-loopback timeout 60 $CPEER server 0 1 65536 65536 echo
result c-loopback timeout 60 $CPEER client 0 1 echo-check $PAYLOAD
wait

xenconsoled --log=guest --log-dir=/var/log/xen/console

# The unikernel guest (guest/ on xen-pv), alone on the machine: its image, its self-test against
# dom0 (grants and event channels both ways, xenstore), and a job it must refuse.
guest_log() { echo "/var/log/xen/console/guest-$1.log"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# wait_line LOG REGEX SECONDS: wait until the console log LOG has a line matching REGEX
# (timed by /proc/uptime: under a loaded emulator a fixed count of sleeps takes far longer).
wait_line() {
    read -r now _ < /proc/uptime
    end=$((${now%.*} + $3))
    while :; do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        read -r now _ < /proc/uptime
        [ "${now%.*}" -lt "$end" ] || return 1
        sleep 0.1
    done
}
# guest_gone NAME: wait up to 30 s for the domain to shut itself down (on_poweroff destroys it).
guest_gone() {
    for _ in $(seq 1 150); do xl domid "$1" >/dev/null 2>&1 || return 0; sleep 0.2; done
    echo "domain $1 is still there"
    return 1
}
# guest_post_mortem NAME: what Xen and the guest said, for a failed check; then destroy it.
guest_post_mortem() {
    echo "----- $1 console -----"
    tr -d '\r' < "$(guest_log "$1")" | sed 's/^/guest| /'
    if D=$(xl domid "$1" 2>/dev/null); then
        xl list "$1"
        xenctx "$D" 2>&1 | head -40
        xl destroy "$1"
    fi
    xl dmesg | tail -30
}

guest_image_size() {
    size=$(stat -c %s /boot/vchan-guest)
    echo "FIGURE guest image: $size bytes ($((size / 1024)) KiB; goal at most 512 KiB)"
    [ "$size" -le $((512 * 1024)) ]
}
result guest-image-size guest_image_size

guest_selftest() {
    failed=
    t0=$(uptime_s)
    timeout 60 xl create /etc/xen/guest-selftest.cfg || return 1
    G=$(xl domid guest-selftest) || return 2
    timeout 400 $PEER guest-selftest "$G" &
    peer=$!
    log=$(guest_log guest-selftest)
    if wait_line "$log" '^READY$' 60; then
        t1=$(uptime_s)
        kib=$(xenstore-read "/local/domain/$G/memory/target")
        echo "FIGURE guest memory: $((kib / 1024)) MiB (its memory target in xenstore)"
        echo "FIGURE guest from xl create to READY: $(awk "BEGIN {printf \"%.2f\", $t1 - $t0}") s"
    else
        echo "the guest printed no READY within 60 s"
    fi
    wait $peer || failed="dom0's half of the self-test failed"
    wait_line "$log" '^(DONE|ERROR)' 60 || failed="the guest printed neither DONE nor ERROR"
    tr -d '\r' < "$log" | grep -qx DONE || failed=${failed:-"the guest did not print DONE"}
    guest_gone guest-selftest || failed=${failed:-"the guest did not shut down"}
    if [ -n "$failed" ]; then
        echo "$failed"
        guest_post_mortem guest-selftest
        return 3
    fi
    tr -d '\r' < "$log" | sed 's/^/guest| /'
}
result guest-selftest guest_selftest

guest_bad_job() {
    timeout 60 xl create /etc/xen/guest-bad.cfg || return 1
    log=$(guest_log guest-bad)
    wait_line "$log" '^ERROR ' 60 || { guest_post_mortem guest-bad; return 2; }
    tr -d '\r' < "$log" | grep -qx 'ERROR unknown job "frobnicate": extra= names one of send, recv, echo, http, selftest' ||
        { guest_post_mortem guest-bad; return 3; }
    guest_gone guest-bad || { guest_post_mortem guest-bad; return 4; }
}
result guest-bad-job guest_bad_job

# The Linux guest. Its time from `xl create` to its first test, next to the unikernel's.
T0=$(uptime_s)
(
    if wait_line "$(guest_log domu)" '^(PASS|FAIL) domu-boot' 300; then
        echo "FIGURE Linux domU from xl create to its first test: $(awk "BEGIN {printf \"%.2f\", $(uptime_s) - $T0}") s"
    fi
) &
if timeout 120 xl create /etc/xen/domu.cfg; then
    D=$(xl domid domu)
    echo "domU is domain $D"
else
    echo "FAIL domu-create"
    D=
fi

if [ -n "$D" ]; then
    # The same order as init-domu.sh; whichever side serves runs in the background.
    side cat-dom0-server-sends send_server $D 10 $PAYLOAD
    wait
    result cat-domu-server-sends recv_check recv_client $D 11
    result cat-dom0-server-receives recv_check recv_server $D 14
    side cat-domu-server-receives send_client $D 15 $PAYLOAD
    wait

    side c-server-rust-client timeout 120 $CPEER server $D 12 65536 8192 echo
    wait
    side rust-server-c-client timeout 120 $PEER server $D 13 8192 65536 echo
    wait

    side ring-1024-2048 timeout 120 $PEER server $D 20 0 0 echo --caps 1024 2048
    wait
    side ring-2048-1024 timeout 120 $PEER server $D 21 2048 1024 echo --caps 2048 1024
    wait
    side ring-4k timeout 120 $PEER server $D 22 4096 4096 echo --caps 4096 4096
    wait
    side ring-64k timeout 120 $PEER server $D 23 65536 65536 echo --caps 65536 65536
    wait
    side ring-1m timeout 120 $PEER server $D 24 1048576 1048576 echo --caps 1048576 1048576
    wait

    # The guest kills its end mid-transfer; we must notice within a second.
    result kill-client timeout 120 $PEER server $D 30 65536 65536 drain-measure
    result kill-server timeout 120 $PEER client $D 31 drain-measure

    # conduit-vchan's rendezvous through the real xenstored, both ways, four connections at
    # once: the listener must see each request's owner as the calling domain (the domU's own
    # node; dom0's, whose privileged creation would otherwise inherit the directory's owner).
    side conduit-domu-calls-dom0 timeout 120 $PEER conduit-serve 'vchan://*/echo' 4 $D
    wait
    result conduit-dom0-calls-domu timeout 120 $PEER conduit-call "vchan://$D/echo" $PAYLOAD 4

    # A burst from the guest: 50 connects at once to a dom0 service, within the guest's xenstore
    # quotas (10 transactions, 128 watches at once), every one answered with its own body.
    side conduit-burst-domu-calls-dom0 timeout 300 $PEER conduit-burst-serve 'vchan://*/burst' 50 $D
    wait

    # HTTP over conduit-vchan (the axum server and hyper client examples), both ways at once:
    # each side serves the payload and fetches the other's, four requests at a time.
    http-server 'vchan://*/http' --file $PAYLOAD 2>/tmp/http-server.log &
    HTTP_SERVER=$!
    result http-dom0-fetches-domu http_fetch "vchan://$D/http"
    xenstore-write /local/domain/$D/data/dom0-fetched 1
    wait_key /local/domain/$D/data/domu-fetched
    kill $HTTP_SERVER
    wait $HTTP_SERVER || echo "FAIL http-server-dom0 (exit $?)"

    # vchan-proxy at both ends: a web server on the domU's loopback (the HTTP example on TCP)
    # behind the domU's proxy, reached through ours as a local TCP port, four requests at once.
    # --no-check: the guest's proxy may not be published yet (http_fetch tries again).
    vchan-proxy --no-check tcp://127.0.0.1:9000 "vchan://$D/web" 2>/tmp/proxy-dom0.log &
    PROXY=$!
    result proxy-dom0-fetches-domu-web http_fetch tcp://127.0.0.1:9000
    xenstore-write /local/domain/$D/data/dom0-proxied 1
    kill $PROXY
    wait $PROXY || { echo "FAIL proxy-dom0 (exit $?)"; cat /tmp/proxy-dom0.log; }

    # The benchmark, dom0 to domU: dom0 serves (and writes), the guest reads and reports.
    echo "$BENCH_CELLS" | while read -r impl port ring mode msg count; do
        side "bench-$impl-$port" timeout 300 $(bench_prog "$impl") server $D "$port" "$ring" "$mode" "$msg" "$count"
        wait
    done

    # The domU's whole domain destroyed mid-transfer (no unmap notification runs in it, no event
    # comes): our ends, a server and a client each reading the guest's flood, must report the
    # peer gone within 1 s of `xl destroy` returning, and once they close no zombie domain may
    # be left (a mapping of its pages would keep it).
    rm -f /tmp/destroyed
    ( result destroy-dom0-server timeout 180 $PEER server $D 50 65536 65536 destroy-measure /tmp/destroyed ) &
    ( result destroy-dom0-client timeout 180 $PEER client $D 51 destroy-measure /tmp/destroyed ) &
    if wait_key /local/domain/$D/data/flooding; then
        sleep 0.5
        xl destroy domu
        touch /tmp/destroyed
    else
        touch /tmp/destroyed
    fi
    wait
    for _ in $(seq 1 150); do xl list | grep -q '(null)' || break; sleep 0.2; done
    if xl list | grep -q '(null)'; then
        echo "FAIL destroy-released (a zombie domain is left: its pages are still mapped)"
        xl list
    else
        echo "PASS destroy-released"
    fi

    for _ in $(seq 1 600); do xl list domu >/dev/null 2>&1 || break; sleep 0.2; done
    xl list domu >/dev/null 2>&1 && { echo "domU still running: destroying it"; xl destroy domu; }
    sleep 1
    echo "----- domU console -----"
    tr -d '\r' < /var/log/xen/console/guest-domu.log | sed -E '/^(PASS|FAIL) /!s/^/domu| /'
    echo "----- end of domU console -----"
fi

# Our endpoints at both ends inside dom0 (loopback: see TESTING.md).
side rust-loopback timeout 60 $PEER server 0 2 65536 65536 echo
result rust-loopback timeout 60 $PEER client 0 2 echo-check $PAYLOAD
wait

echo "dom0 checks done"
poweroff -f
