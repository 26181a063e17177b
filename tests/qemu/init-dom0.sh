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

# The guest.
xenconsoled --log=guest --log-dir=/var/log/xen/console
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

    # The drop-in libxenvchan on real Xen. A probe serving on it (its handle's fields, a
    # notify through ctrl->event with the real libxenevtchn, every descriptor close-on-exec,
    # flags rewritten between calls) talks to the probe on Debian's library in the guest.
    dropin_fields() {
        dropin timeout 120 vchan-probe server "$1" "data/vchan/$1/64" 0 0 fields >/tmp/fields ||
            return 1
        for want in "is_open 2" "notify-through-event 0" "fd_for_select matches" "cloexec all" \
            "is_open-connected 1" "nonblocking-read 0" "blocking-recv 6 second" \
            "read-after-close -1 EPIPE" "is_open-after-close 0" "done"; do
            grep -q "^$want" /tmp/fields || {
                echo "no '$want' from the probe:"
                cat /tmp/fields
                return 1
            }
        done
    }
    result dropin-fields dropin_fields $D
    # Xen's vchan-socket-proxy on the drop-in, stdin/stdout as its other end, in both modes:
    # server mode receiving from our vchan-cat and sending to a C client on Debian's library in
    # the guest; client mode (libxl's way to a stub domain's QMP) receiving from our server and
    # sending to a C server on Debian's library. An fd held open read-write on a fifo is an input
    # that never ends.
    # proxy_send MODE DOMID PATH PORT: the proxy sending the small payload; its input ends once
    # the guest says it has every byte. (vchan-socket-proxy, on either library, never exits if
    # its input ends while its last bytes wait to fit the ring: it writes them and then waits
    # for an event nobody sends. With the input held open until everything has arrived, it ends
    # with nothing left to write, and closes.) The input is made here, inside the background
    # job: the shell gives a background job /dev/null, whatever the caller redirected.
    proxy_send() {
        { cat $SMALL_PAYLOAD; wait_key /local/domain/$2/data/dropin-received-$4; } |
            dropin timeout 180 vchan-socket-proxy -m "$1" "$2" "$3" - >/dev/null
    }
    mkfifo /tmp/idle
    result dropin-proxy-server-ours recv_check_small dropin timeout 120 \
        vchan-socket-proxy -m server $D data/vchan/$D/60 - 0<>/tmp/idle
    side dropin-proxy-server-c proxy_send server $D data/vchan/$D/61 61
    wait
    result dropin-proxy-client-ours recv_check_small dropin timeout 120 \
        vchan-socket-proxy -m client $D /local/domain/$D/data/vchan/0/62 - 0<>/tmp/idle
    side dropin-proxy-client-c proxy_send client $D /local/domain/$D/data/vchan/0/63 63
    wait

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
