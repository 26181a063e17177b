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

# The unikernel guest's vchan jobs (issue 18), one guest per check, alone on the machine: both
# roles each way against Debian's libxenvchan (vchan-peer) and against our vchan-cat, GUEST_BYTES
# each, hashed; echo against a C client; HTTP through vchan-proxy; xl destroy mid-transfer; dom0's
# peer killed mid-transfer. A guest that serves publishes at data/vchan/0/PORT in its home (what
# a client in dom0 finds by PORT); a guest that connects finds dom0's server at
# /local/domain/0/data/guest-vchan/PORT (a path without the guest's id, known only once it exists).
GUEST_BYTES=$(cat /guest-bytes)
GUEST_SHA=$(cat /guest-bytes.sha256)

# (These helpers keep off `name`, which `result` prints after running them.)
# guest_start NAME EXTRA: write the guest's xl config and create it; G is its domid.
guest_start() {
    cat > "/etc/xen/$1.cfg" <<CFG
name = "$1"
type = "pv"
kernel = "/boot/vchan-guest"
extra = "$2"
memory = 32
vcpus = 1
on_poweroff = "destroy"
on_crash = "preserve"
CFG
    timeout 60 xl create "/etc/xen/$1.cfg" > /dev/null || { echo "xl create $1 failed"; return 1; }
    G=$(xl domid "$1") || return 1
    GUEST_T0=$(uptime_s)
}

# guest_end NAME [SECONDS]: wait for the guest's DONE or ERROR line and for it to power off;
# print its console; fail unless it printed DONE.
guest_end() {
    log=$(guest_log "$1")
    wait_line "$log" '^(DONE|ERROR)' "${2:-300}" ||
        { echo "$1 printed neither DONE nor ERROR"; guest_post_mortem "$1"; return 1; }
    guest_gone "$1" || { guest_post_mortem "$1"; return 1; }
    tr -d '\r' < "$log" | sed "s/^/$1| /"
    tr -d '\r' < "$log" | grep -qx DONE
}

# guest_took NAME: one line with the transfer's time, from xl create to now.
guest_took() {
    echo "guest $1: $GUEST_BYTES bytes in $(awk "BEGIN {printf \"%.1f\", $(uptime_s) - $GUEST_T0}") s from xl create"
}

# sha_is FILE SHA: FILE's sha256 is SHA (the file is removed).
sha_is() {
    got=$(sha256sum < "$1" | cut -d' ' -f1)
    rm -f "$1"
    [ "$got" = "$2" ] || { echo "sha256 $got, expected $2"; return 1; }
}

# guest_result NAME: the guest's RESULT line is GUEST_BYTES bytes of the pattern.
guest_result() {
    line=$(tr -d '\r' < "$(guest_log "$1")" | grep '^RESULT ')
    [ "$line" = "RESULT bytes=$GUEST_BYTES sha256=$GUEST_SHA" ] ||
        { echo "the guest said \"$line\", expected RESULT bytes=$GUEST_BYTES sha256=$GUEST_SHA"; return 1; }
}

# guest_sends NAME EXTRA DOM0-RECEIVER...: the guest sends, dom0's receiver writes to stdout.
guest_sends() {
    gname=$1 gextra=$2
    shift 2
    guest_start "$gname" "$gextra" || return 1
    "$@" > /tmp/guest-received || { echo "dom0's receiver failed"; guest_post_mortem "$gname"; return 2; }
    guest_end "$gname" || return 3
    guest_took "$gname"
    sha_is /tmp/guest-received "$GUEST_SHA"
}

# guest_receives NAME EXTRA DOM0-SENDER...: dom0's sender sends, the guest prints RESULT.
guest_receives() {
    gname=$1 gextra=$2
    shift 2
    guest_start "$gname" "$gextra" || return 1
    "$@" > /dev/null || { echo "dom0's sender failed"; guest_post_mortem "$gname"; return 2; }
    guest_end "$gname" || return 3
    guest_took "$gname"
    guest_result "$gname"
}

# dom0's ends: Debian's libxenvchan (vchan-peer) and our vchan-cat, as client (of the guest's
# port) or server (at data/guest-vchan/PORT in dom0's home, for client $G), serving 64 KiB rings
# as the guest does (vchan-cat's own default is the smallest channel, 1 and 2 KiB in-page rings,
# on which 16 MiB took 2 minutes here: about 7 ms per ring under emulation).
CAT_RINGS="--read-min 64k --write-min 64k"
c_client_recv() { timeout 600 $CPEER client "$G" "$1" recv; }
c_server_recv() { timeout 600 $CPEER server "$G" "data/guest-vchan/$1" 65536 65536 recv; }
c_client_send() { timeout 600 $CPEER client "$G" "$1" send "$GUEST_BYTES"; }
c_server_send() { timeout 600 $CPEER server "$G" "data/guest-vchan/$1" 65536 65536 send "$GUEST_BYTES"; }
cat_client_recv() { timeout 600 vchan-cat --wait 90 "$G" "$1" < /dev/null; }
cat_server_recv() { timeout 600 vchan-cat -l $CAT_RINGS "$G" "data/guest-vchan/$1" < /dev/null; }
cat_client_send() { $PEER pattern "$GUEST_BYTES" | timeout 600 vchan-cat -N --wait 90 "$G" "$1"; }
cat_server_send() { $PEER pattern "$GUEST_BYTES" | timeout 600 vchan-cat -N -l $CAT_RINGS "$G" "data/guest-vchan/$1"; }
GV=/local/domain/0/data/guest-vchan

result guest-send-server-c guest_sends g-send-server-c "send server 0 data/vchan/0/60 $GUEST_BYTES ring=1048576" c_client_recv 60
result guest-send-client-c guest_sends g-send-client-c "send client 0 $GV/61 $GUEST_BYTES" c_server_recv 61
result guest-recv-server-c guest_receives g-recv-server-c "recv server 0 data/vchan/0/62" c_client_send 62
result guest-recv-client-c guest_receives g-recv-client-c "recv client 0 $GV/63" c_server_send 63
result guest-send-server-cat guest_sends g-send-server-cat "send server 0 data/vchan/0/64 $GUEST_BYTES" cat_client_recv 64
result guest-send-client-cat guest_sends g-send-client-cat "send client 0 $GV/65 $GUEST_BYTES" cat_server_recv 65
result guest-recv-server-cat guest_receives g-recv-server-cat "recv server 0 data/vchan/0/66 ring=1048576" cat_client_send 66
result guest-recv-client-cat guest_receives g-recv-client-cat "recv client 0 $GV/67" cat_server_send 67

# echo, the guest serving with 4 KiB rings, against libxenvchan's client (the 3 MiB payload).
guest_echo() {
    guest_start g-echo "echo server 0 data/vchan/0/68 ring=4096" || return 1
    timeout 300 $CPEER client "$G" 68 echo-check $PAYLOAD || { guest_post_mortem g-echo; return 2; }
    guest_end g-echo
}
result guest-echo-c guest_echo

# http: the guest serves HTTP/1.1 at libxenvchan's path for port 80; dom0's vchan-proxy makes
# it a local TCP port; clients one after another (hyper's and busybox's), bodies hashed, a 404.
guest_http_get() {
    want=$($PEER pattern "$2" | sha256sum | cut -d' ' -f1)
    case $1 in
        hyper) timeout 120 http-client tcp://127.0.0.1:9000 "/bytes/$2" > /tmp/guest-body ;;
        wget) timeout 120 wget -q -O /tmp/guest-body "http://127.0.0.1:9000/bytes/$2" ;;
    esac || { echo "$1 GET /bytes/$2 failed"; return 1; }
    sha_is /tmp/guest-body "$want" || { echo "($1 GET /bytes/$2)"; return 1; }
}
guest_http() {
    guest_start g-http "http 80" || return 1
    log=$(guest_log g-http)
    wait_line "$log" '^READY$' 60 || { guest_post_mortem g-http; return 2; }
    vchan-proxy tcp://127.0.0.1:9000 "vchan://$G/80" 2> /tmp/guest-proxy.log &
    proxy=$!
    failed=
    for get in "hyper 1048576" "wget 65536" "hyper 0" "wget 3145728" "hyper 251"; do
        # shellcheck disable=SC2086
        guest_http_get $get || { failed=1; break; }
    done
    if [ -z "$failed" ]; then
        out=$(timeout 60 wget -q -O /dev/null http://127.0.0.1:9000/nothing-here 2>&1)
        echo "$out" | grep -q '404' || { echo "GET /nothing-here: $out (expected a 404)"; failed=1; }
    fi
    # Six connections, each served in turn; the guest is still serving.
    wait_line "$log" '^http: connection 6: 404$' 30 || { echo "the guest did not log six connections"; failed=1; }
    xl domid g-http > /dev/null 2>&1 || { echo "the http guest is gone"; failed=1; }
    kill $proxy
    wait $proxy
    [ -z "$failed" ] || { cat /tmp/guest-proxy.log; guest_post_mortem g-http; return 3; }
    tr -d '\r' < "$log" | sed 's/^/g-http| /'
    xl destroy g-http
}
result guest-http-proxy guest_http

# xl destroy of a guest mid-transfer (it serves an endless send): dom0's client must notice
# within 1 s of xl destroy returning, and once it closed no zombie domain may be left.
guest_destroyed() {
    guest_start g-destroy "send server 0 data/vchan/0/70 1099511627776" || return 1
    rm -f /tmp/guest-destroyed
    timeout 180 $PEER client "$G" 70 destroy-measure /tmp/guest-destroyed &
    peer=$!
    if wait_line "$(guest_log g-destroy)" '^vchan: client Connected$' 90; then
        sleep 1
        xl destroy g-destroy
    else
        echo "the guest's client never connected"
        guest_post_mortem g-destroy
    fi
    touch /tmp/guest-destroyed
    wait $peer || return 2
    for _ in $(seq 1 150); do xl list | grep -q '(null)' || return 0; sleep 0.2; done
    echo "a zombie domain is left (its pages are still mapped)"
    xl list
    return 3
}
result guest-destroyed guest_destroyed

# dom0's peer killed mid-transfer (our vchan-cat, kill -9; its kernel clears its live byte and
# sends the event): the guest, sending for ever, must print its end and power off. Both roles.
# guest_peer_killed NAME EXTRA DOM0-END...
guest_peer_killed() {
    gname=$1 gextra=$2
    shift 2
    guest_start "$gname" "$gextra" || return 1
    "$@" < /dev/null > /tmp/guest-killed &
    victim=$!
    flowing=
    for _ in $(seq 1 900); do
        [ "$(stat -c %s /tmp/guest-killed 2>/dev/null || echo 0)" -gt 1048576 ] && { flowing=1; break; }
        sleep 0.1
    done
    kill -9 $victim
    wait $victim
    rm -f /tmp/guest-killed
    [ -n "$flowing" ] || { echo "no data flowed before the kill"; guest_post_mortem "$gname"; return 4; }
    log=$(guest_log "$gname")
    wait_line "$log" '^(DONE|ERROR)' 30 || { echo "the guest did not notice within 30 s"; guest_post_mortem "$gname"; return 2; }
    guest_gone "$gname" || { guest_post_mortem "$gname"; return 3; }
    tr -d '\r' < "$log" | sed "s/^/$gname| /"
    tr -d '\r' < "$log" | grep -q '^ERROR the peer closed after [0-9]* of 1099511627776 bytes were sent$'
}
# (exec: the background job's pid is vchan-cat's own, for the kill.)
cat_server_killable() { exec vchan-cat -l $CAT_RINGS "$G" "data/guest-vchan/$1"; }
cat_client_killable() { exec vchan-cat --wait 90 "$G" "$1"; }
result guest-peer-killed-server guest_peer_killed g-killed-server "send client 0 $GV/71 1099511627776" cat_server_killable 71
result guest-peer-killed-client guest_peer_killed g-killed-client "send server 0 data/vchan/0/72 1099511627776" cat_client_killable 72

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
