#!/bin/sh
# /init of the PV domU in the QEMU tier: the guest's half of every cross-domain check, in the
# same order as init-dom0.sh. Its console lands in dom0's xenconsoled log, which dom0 prints.
/bin/busybox --install -s /bin
. /common.sh
mount_all
ME=$(xenstore-read domid 2>/dev/null)
[ -n "$ME" ] && echo "PASS domu-boot" || echo "FAIL domu-boot (no xenstore)"

# Our xenstore client, unprivileged, over /dev/xen/xenbus.
result xenstore-domu timeout 60 $PEER xenstore guest

result cat-dom0-server-sends recv_check recv_client 0 10
side cat-domu-server-sends send_server 0 11 $PAYLOAD
wait
side cat-dom0-server-receives send_client 0 14 $PAYLOAD
wait
result cat-domu-server-receives recv_check recv_server 0 15

result c-server-rust-client timeout 120 $PEER client 0 12 echo-check $PAYLOAD
result rust-server-c-client timeout 120 $CPEER client 0 13 echo-check $PAYLOAD

result ring-1024-2048 timeout 120 $PEER client 0 20 echo-check $PAYLOAD --caps 2048 1024
result ring-2048-1024 timeout 120 $PEER client 0 21 echo-check $PAYLOAD --caps 1024 2048
result ring-4k timeout 120 $PEER client 0 22 echo-check $PAYLOAD --caps 4096 4096
result ring-64k timeout 120 $PEER client 0 23 echo-check $PAYLOAD --caps 65536 65536
result ring-1m timeout 120 $PEER client 0 24 echo-check $PAYLOAD --caps 1048576 1048576

# Victims: killed with SIGKILL once data flows; dom0 reports how fast it noticed.
$PEER client 0 30 flood /tmp/flowing-30 &
kill_when_flowing /tmp/flowing-30 $! || echo "FAIL kill-client (guest side)"
wait
$PEER server 0 31 65536 65536 flood /tmp/flowing-31 &
kill_when_flowing /tmp/flowing-31 $! || echo "FAIL kill-server (guest side)"
wait

result conduit-domu-calls-dom0 timeout 120 $PEER conduit-call 'vchan://0/echo' $PAYLOAD 4
side conduit-dom0-calls-domu timeout 120 $PEER conduit-serve 'vchan://*/echo' 4 0
wait
result conduit-burst-domu-calls-dom0 timeout 300 $PEER conduit-burst-call 'vchan://0/burst' 50

http-server 'vchan://*/http' --file $PAYLOAD 2>/tmp/http-server.log &
HTTP_SERVER=$!
result http-domu-fetches-dom0 http_fetch "vchan://0/http"
xenstore-write data/domu-fetched 1
wait_key data/dom0-fetched
kill $HTTP_SERVER
wait $HTTP_SERVER || echo "FAIL http-server-domu (exit $?)"

# A web server on the loopback only, served to other domains by vchan-proxy (--no-check: the
# web server may still be starting).
http-server tcp://127.0.0.1:8080 --file $PAYLOAD 2>/tmp/http-local.log &
WEB=$!
vchan-proxy --no-check 'vchan://*/web' tcp://127.0.0.1:8080 2>/tmp/proxy-domu.log &
PROXY=$!
wait_key data/dom0-proxied
kill $PROXY
wait $PROXY || { echo "FAIL proxy-domu (exit $?)"; cat /tmp/proxy-domu.log; }
kill $WEB
wait $WEB || echo "FAIL http-server-local (exit $?)"

# The drop-in libxenvchan's checks, in dom0's order: the other end of each, on Debian's library
# or ours (vchan-cat).
dropin_fields_client() {
    wait_key /local/domain/0/data/vchan/$ME/64/event-channel || return 1
    timeout 120 vchan-probe client 0 /local/domain/0/data/vchan/$ME/64 fields >/tmp/fields-c ||
        return 1
    grep -qx "sent second" /tmp/fields-c || { cat /tmp/fields-c; return 1; }
}
side dropin-fields dropin_fields_client
wait
side dropin-proxy-server-ours send_client 0 60 $SMALL_PAYLOAD
wait
# c_recv PORT ARGS...: vchan-nc ARGS on Debian's library, receiving the small payload from
# dom0's proxy: once every byte is there, tell dom0, which then ends the proxy's input (the proxy
# then closes, and vchan-nc ends); print what arrived.
c_recv() {
    port=$1
    shift
    timeout 180 vchan-nc "$@" </dev/null >/tmp/got-$port &
    nc=$!
    for _ in $(seq 1 900); do
        [ "$(wc -c </tmp/got-$port)" -ge "$(wc -c <$SMALL_PAYLOAD)" ] && break
        sleep 0.2
    done
    xenstore-write data/dropin-received-$port 1
    wait $nc || return 1
    cat /tmp/got-$port
}
c_recv_client() {
    wait_key /local/domain/0/data/vchan/$ME/$1/event-channel || return 1
    c_recv "$1" 0 /local/domain/0/data/vchan/$ME/$1
}
result dropin-proxy-server-c recv_check_small c_recv_client 61
side dropin-proxy-client-ours send_server 0 62 $SMALL_PAYLOAD
wait
result dropin-proxy-client-c recv_check_small c_recv 63 -l 0 data/vchan/0/63 0 0

echo "$BENCH_CELLS" | while read -r impl port ring mode msg count; do
    result "bench-$impl-$port" bench_client "$impl" 0 "$port" "$ring" "$mode" "$msg" "$count"
done

# The victims of dom0's destroy check: flood dom0 both ways (a client on port 50, a server on
# port 51) until dom0 destroys this domain.
$PEER client 0 50 flood /tmp/flowing-50 &
$PEER server 0 51 65536 65536 flood /tmp/flowing-51 &
for _ in $(seq 1 900); do
    [ -e /tmp/flowing-50 ] && [ -e /tmp/flowing-51 ] && break
    sleep 0.2
done
xenstore-write data/flooding 1
echo "domU checks done (flooding until dom0 destroys this domain)"
sleep 600
poweroff -f
