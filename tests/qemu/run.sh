#!/usr/bin/env bash
# The QEMU tier: boot a real Xen 4.17 hypervisor with a Debian dom0 and a PV domU under QEMU
# (TCG) and run the project's binaries against the real kernel devices, the real xenstored and
# Debian's libxenvchan. See TESTING.md.
#
# Environment (all optional):
#   XEN_QEMU_CACHE    downloaded packages and unpacked images (default /var/cache/xenvchan-qemu)
#   XEN_QEMU_WORK     per-run images and the console log (default <repo>/target/qemu)
#   XEN_QEMU_TIMEOUT  hard limit on the QEMU run in seconds (default 1200)
#   XEN_QEMU_GUEST_BYTES  bytes each unikernel guest transfer carries (default GUEST_BYTES below)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${XEN_QEMU_CACHE:-/var/cache/xenvchan-qemu}
WORK=${XEN_QEMU_WORK:-$ROOT/target/qemu}
TIMEOUT=${XEN_QEMU_TIMEOUT:-1200}
# What each of the unikernel guest's eight transfers carries (TESTING.md says why this size).
GUEST_BYTES=${XEN_QEMU_GUEST_BYTES:-$((64 * 1024 * 1024))}
XEN_BIN=usr/lib/xen-4.17/bin
# Every check the run must report as PASS.
EXPECTED=(
    boot xenstore-dom0 xs-dom0 backends-dom0 c-loopback
    guest-image-size guest-selftest guest-bad-job
    guest-send-server-c guest-send-client-c guest-recv-server-c guest-recv-client-c
    guest-send-server-cat guest-send-client-cat guest-recv-server-cat guest-recv-client-cat
    guest-echo-c guest-http-proxy guest-destroyed guest-peer-killed-server guest-peer-killed-client
    domu-boot xenstore-domu
    cat-dom0-server-sends cat-domu-server-sends cat-dom0-server-receives cat-domu-server-receives
    c-server-rust-client rust-server-c-client
    ring-1024-2048 ring-2048-1024 ring-4k ring-64k ring-1m
    kill-client kill-server
    conduit-domu-calls-dom0 conduit-dom0-calls-domu conduit-burst-domu-calls-dom0
    http-dom0-fetches-domu http-domu-fetches-dom0 proxy-dom0-fetches-domu-web
    bench-ours-40 bench-c-41 bench-ours-42 bench-c-43 bench-ours-44 bench-c-45
    destroy-dom0-server destroy-dom0-client destroy-released
    rust-loopback
    dropin-fields dropin-proxy-server-ours dropin-proxy-server-c
    dropin-proxy-client-ours dropin-proxy-client-c
)

say() { echo "qemu-tier: $*" >&2; }
die() {
    say "error: $*"
    exit 2
}
START=$(date +%s)

# ---- 1. Host packages -------------------------------------------------------------------------
APT_UPDATED=
apt_update() {
    if [ -z "$APT_UPDATED" ]; then
        say "apt-get update"
        apt-get update -q >/dev/null
        APT_UPDATED=1
    fi
}
apt_install() {
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

QEMU_DATA=()
install_packages() {
    local need=() p
    for p in busybox-static cpio xz-utils libxen-dev gcc binutils; do
        dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    [ ${#need[@]} -eq 0 ] || {
        say "installing ${need[*]}"
        apt_install "${need[@]}"
    }
    if command -v qemu-system-x86_64 >/dev/null; then
        QEMU=$(command -v qemu-system-x86_64)
        return
    fi
    QEMU=$CACHE/qemu/usr/bin/qemu-system-x86_64
    # The unpacked emulator looks for firmware beside itself: point it at the installed packages.
    QEMU_DATA=(-L /usr/share/qemu -L /usr/share/seabios -L /usr/lib/ipxe/qemu)
    if [ -x "$QEMU" ] && ! ldd "$QEMU" | grep "not found" >/dev/null; then
        return
    fi
    say "installing qemu-system-x86"
    if apt_install qemu-system-x86 2>/dev/null; then
        QEMU=$(command -v qemu-system-x86_64)
        QEMU_DATA=()
        return
    fi
    # Some machines carry a newer qemu-utils that conflicts with the distribution's
    # qemu-system-common: then unpack the emulator beside the cache and install only its
    # libraries from the archive.
    say "qemu-system-x86 does not install here; unpacking it into $CACHE/qemu instead"
    local deps
    deps=$(apt-cache depends qemu-system-x86 | awk '/^  Depends:/ && $2 !~ /^</ {print $2}' |
        grep -v '^qemu-system-common$')
    # shellcheck disable=SC2086
    apt_install $deps
    mkdir -p "$CACHE/qemu-debs" "$CACHE/qemu"
    (cd "$CACHE/qemu-debs" && apt-get download -q qemu-system-x86 qemu-system-common >/dev/null 2>&1)
    for d in "$CACHE"/qemu-debs/*.deb; do dpkg-deb -x "$d" "$CACHE/qemu"; done
    [ -x "$QEMU" ] || die "no qemu-system-x86_64 after unpacking"
}

# ---- 2. Xen, the toolstack and the kernel, downloaded and unpacked (never installed) -----------
fetch_xen() {
    local kpkg
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && !found {print $2; found = 1}')
    if [ -z "$kpkg" ]; then
        apt_update
        kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ && !found {print $2; found = 1}')
    fi
    [ -n "$kpkg" ] || die "cannot tell which kernel linux-image-amd64 depends on"
    XROOT=$CACHE/root-$kpkg
    if [ ! -e "$XROOT/.complete" ]; then
        say "downloading xen-hypervisor-4.17-amd64 xen-utils-4.17 xenstore-utils $kpkg"
        apt_update
        rm -rf "$CACHE/debs" "$XROOT"
        mkdir -p "$CACHE/debs" "$XROOT"
        (cd "$CACHE/debs" && apt-get download -q xen-hypervisor-4.17-amd64 xen-utils-4.17 \
            xenstore-utils "$kpkg" >/dev/null 2>&1) || die "apt-get download failed"
        for d in "$CACHE"/debs/*.deb; do dpkg-deb -x "$d" "$XROOT"; done
        # QEMU's multiboot loader wants the plain hypervisor image.
        zcat "$XROOT"/boot/xen-4.17-amd64.gz >"$XROOT/xen"
        # Unpack the kernel's XZ payload once: saves seconds of emulated decompression.
        local vmlinuz off
        vmlinuz=$(ls "$XROOT"/boot/vmlinuz-*)
        off=$(LC_ALL=C grep -m1 -obUaP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1)
        off=${off%%$'\n'*}
        [ -n "$off" ] || die "no XZ payload in $vmlinuz"
        # (xz stops reading after its stream: tail's SIGPIPE is expected.)
        tail -c +$((off + 1)) "$vmlinuz" | xz -dc --single-stream >"$XROOT/vmlinux" || true
        [ "$(head -c 4 "$XROOT/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] ||
            die "the kernel's payload did not unpack to an ELF image"
        gzip -1 -c "$XROOT/vmlinux" >"$XROOT/vmlinux.gz"
        touch "$XROOT/.complete"
    fi
    MODDIR=$(ls -d "$XROOT"/lib/modules/*/kernel/drivers/xen)
}

# ---- 3. The programs under test ----------------------------------------------------------------
build_programs() {
    say "building the Rust peer (release)"
    export CARGO_TARGET_DIR=$ROOT/target
    cargo build -q --release --manifest-path "$ROOT/Cargo.toml" -p xen-qemu-peer
    PEER_BIN=$ROOT/target/release/xen-qemu-peer
    say "building vchan-cat, vchan-proxy, xs and vchan-perf (release)"
    cargo build -q --release --manifest-path "$ROOT/Cargo.toml" -p tools --bin vchan-cat --bin xs \
        --bin vchan-perf --bin vchan-proxy
    PROXY_BIN=$ROOT/target/release/vchan-proxy
    CAT_BIN=$ROOT/target/release/vchan-cat
    XS_BIN=$ROOT/target/release/xs
    PERF_BIN=$ROOT/target/release/vchan-perf
    say "building the HTTP examples of conduit-vchan (release)"
    cargo build -q --release --manifest-path "$ROOT/Cargo.toml" -p conduit-vchan \
        --features tokio,hyper,axum --example http-server --example http-client
    HTTP_SERVER_BIN=$ROOT/target/release/examples/http-server
    HTTP_CLIENT_BIN=$ROOT/target/release/examples/http-client
    say "building the unikernel guest image (scripts/guest)"
    GUEST_IMG=$("$ROOT/scripts/guest" | tail -n1)
    say "compiling the libxenvchan peer"
    mkdir -p "$WORK"
    gcc -O2 -Wall -Wextra -Werror -o "$WORK/vchan-peer" "$HERE/c/vchan-peer.c" -lxenvchan -lxenstore
    gcc -O2 -Wall -o "$WORK/vchan-perf-c" "$ROOT/tests/c/vchan-perf.c" -lxenvchan -lxenstore
    say "building the drop-in libxenvchan (release) and its C probes"
    DROPIN_DIR=$("$ROOT/scripts/libxenvchan" | tail -n1)
    gcc -O2 -Wall -o "$WORK/vchan-nc" "$ROOT/tests/c/vchan-nc.c" -lxenvchan -lxenstore
    gcc -O2 -Wall -o "$WORK/vchan-probe" "$ROOT/tests/c/vchan-probe.c" -lxenvchan -lxenstore \
        -lxenevtchn
}

# ---- 4. The initramfs images --------------------------------------------------------------------
# copy_prog SRC DEST: copy a program (stripped) and every shared library ldd lists for it.
copy_prog() {
    local src=$1 dest=$2 lib
    mkdir -p "$(dirname "$dest")"
    strip -o "$dest" "$src" 2>/dev/null || cp "$src" "$dest"
    for lib in $(ldd "$src" 2>/dev/null | awk '/=> \// {print $3} /^\t\// {print $1}'); do
        [ -e "$IMG$lib" ] && continue
        mkdir -p "$IMG$(dirname "$lib")"
        cp -L "$lib" "$IMG$lib"
    done
}

base_image() {
    IMG=$1
    rm -rf "$IMG"
    mkdir -p "$IMG"/{bin,sbin,etc,proc,sys,dev,run,tmp,modules,usr/bin,var/lib,var/log}
    ln -s ../run "$IMG/var/run"
    ln -s ../run/lock "$IMG/var/lock"
    cp /bin/busybox "$IMG/bin/busybox"
    ln -s busybox "$IMG/bin/sh"
    local m
    for m in xen-evtchn xen-privcmd xenfs/xenfs xen-gntdev xen-gntalloc; do
        cp "$MODDIR/$m.ko" "$IMG/modules/"
    done
    cp "$HERE/common.sh" "$IMG/common.sh"
    cp "$WORK/payload.bin" "$WORK/payload.sha256" "$IMG/"
    copy_prog "$PEER_BIN" "$IMG/bin/qemu-peer"
    copy_prog "$WORK/vchan-peer" "$IMG/bin/vchan-peer"
    copy_prog "$CAT_BIN" "$IMG/bin/vchan-cat"
    copy_prog "$PROXY_BIN" "$IMG/bin/vchan-proxy"
    copy_prog "$XS_BIN" "$IMG/bin/xs"
    copy_prog "$PERF_BIN" "$IMG/bin/vchan-perf"
    copy_prog "$HTTP_SERVER_BIN" "$IMG/bin/http-server"
    copy_prog "$HTTP_CLIENT_BIN" "$IMG/bin/http-client"
    copy_prog "$WORK/vchan-perf-c" "$IMG/bin/vchan-perf-c"
    copy_prog "$XROOT/usr/bin/xenstore" "$IMG/usr/bin/xenstore"
    # The drop-in libxenvchan, alone in /dropin (LD_LIBRARY_PATH=/dropin puts it in front of
    # Debian's), Xen's vchan-socket-proxy that runs on it, and two C programs on either library.
    copy_prog "$DROPIN_DIR/libxenvchan.so.4.17" "$IMG/dropin/libxenvchan.so.4.17"
    copy_prog "$XROOT/$XEN_BIN/vchan-socket-proxy" "$IMG/$XEN_BIN/vchan-socket-proxy"
    copy_prog "$WORK/vchan-nc" "$IMG/bin/vchan-nc"
    copy_prog "$WORK/vchan-probe" "$IMG/bin/vchan-probe"
    local t
    for t in read write ls rm; do ln -s xenstore "$IMG/usr/bin/xenstore-$t"; done
}

pack() { (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) >"$2"; }

build_images() {
    say "building the initramfs images"
    # The payload every transfer carries: 3 MiB, so that even a 1 MiB ring wraps.
    head -c $((3 * 1024 * 1024)) /dev/urandom >"$WORK/payload.bin"
    sha256sum <"$WORK/payload.bin" | cut -d' ' -f1 >"$WORK/payload.sha256"

    base_image "$WORK/domu"
    cp "$HERE/init-domu.sh" "$IMG/init"
    chmod +x "$IMG/init"
    pack "$WORK/domu" "$WORK/domu.cpio.gz"

    base_image "$WORK/dom0"
    # The unikernel guest's transfers: their size, and the sha256 of that much of its stream.
    echo "$GUEST_BYTES" >"$IMG/guest-bytes"
    "$PEER_BIN" pattern "$GUEST_BYTES" | sha256sum | cut -d' ' -f1 >"$IMG/guest-bytes.sha256"
    local p
    for p in xenstored xen-init-dom0 xl xenconsoled; do
        copy_prog "$XROOT/$XEN_BIN/$p" "$IMG/$XEN_BIN/$p"
    done
    # xl aborts without libgcc_s (pthread_cancel loads it at run time).
    local gcc_s
    gcc_s=$(ldconfig -p | awk '/libgcc_s.so.1 .*x86-64/ && !found {print $NF; found = 1}')
    mkdir -p "$IMG$(dirname "$gcc_s")"
    cp -L "$gcc_s" "$IMG$gcc_s"
    mkdir -p "$IMG/boot" "$IMG/etc/xen"
    cp "$XROOT/vmlinux.gz" "$IMG/boot/vmlinux.gz"
    cp "$WORK/domu.cpio.gz" "$IMG/boot/domu.cpio.gz"
    # The unikernel guest (guest/ on xen-pv): its platform self-test with dom0, and a bad job.
    cp "$GUEST_IMG" "$IMG/boot/vchan-guest"
    copy_prog "$XROOT/$XEN_BIN/xenctx" "$IMG/$XEN_BIN/xenctx"
    local job
    for job in "selftest:selftest 0" "bad:frobnicate 1"; do
        cat >"$IMG/etc/xen/guest-${job%%:*}.cfg" <<CFG
name = "guest-${job%%:*}"
type = "pv"
kernel = "/boot/vchan-guest"
extra = "${job#*:}"
memory = 32
vcpus = 1
on_poweroff = "destroy"
on_crash = "preserve"
CFG
    done
    cat >"$IMG/etc/xen/domu.cfg" <<'CFG'
name = "domu"
type = "pv"
kernel = "/boot/vmlinux.gz"
ramdisk = "/boot/domu.cpio.gz"
extra = "console=hvc0 rdinit=/init loglevel=4"
memory = 192
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
CFG
    cp "$HERE/init-dom0.sh" "$IMG/init"
    chmod +x "$IMG/init"
    pack "$WORK/dom0" "$WORK/dom0.cpio.gz"
    rm -rf "$WORK/dom0" "$WORK/domu"
}

# ---- 5. Boot and judge ------------------------------------------------------------------------
boot() {
    say "booting Xen + dom0 in QEMU (TCG), hard limit ${TIMEOUT}s"
    cp "$XROOT/xen" "$XROOT/vmlinux" "$WORK/"
    set +e
    (
        cd "$WORK"
        timeout -k 10 "$TIMEOUT" "$QEMU" "${QEMU_DATA[@]}" -accel tcg -cpu qemu64,+rdrand -m 1536 -smp 2 \
            -display none -monitor none -serial stdio -no-reboot -net none \
            -kernel xen \
            -append "console=com1 com1=115200,8n1 dom0_mem=512M,max:512M dom0_max_vcpus=2 bootscrub=false" \
            -initrd "vmlinux console=hvc0 earlyprintk=xen rdinit=/init loglevel=4,dom0.cpio.gz" \
            </dev/null
    ) 2>&1 | tr -d '\r' | tee "$WORK/console.log"
    QEMU_STATUS=${PIPESTATUS[0]}
    set -e
    rm -f "$WORK/xen" "$WORK/vmlinux"
    [ "$QEMU_STATUS" -ne 124 ] || say "QEMU hit the ${TIMEOUT}s limit"
    return 0
}

judge() {
    local pass=0 fail=0 name
    echo "===== QEMU tier results ====="
    for name in "${EXPECTED[@]}"; do
        if grep -q "^FAIL $name\b" "$WORK/console.log"; then
            grep "^FAIL $name\b" "$WORK/console.log"
            fail=$((fail + 1))
        elif grep -qx "PASS $name" "$WORK/console.log"; then
            echo "PASS $name"
            pass=$((pass + 1))
        else
            echo "FAIL $name (no result line)"
            fail=$((fail + 1))
        fi
    done
    # Failures under names not in the list (helpers, setup) count too.
    local extra
    extra=$(grep '^FAIL ' "$WORK/console.log" | grep -v -E "^FAIL ($(
        IFS='|'
        echo "${EXPECTED[*]}"
    ))\b" || true)
    if [ -n "$extra" ]; then
        echo "$extra"
        fail=$((fail + $(echo "$extra" | wc -l)))
    fi
    # The benchmark's figures, dom0 to domU on real Xen (under emulation: they show it runs, not
    # how fast real hardware is).
    sed -n 's/^\(domu| \)\{0,1\}BENCH //p' "$WORK/console.log" >"$WORK/bench.txt"
    if [ -s "$WORK/bench.txt" ]; then
        echo "The benchmark on real Xen, dom0 writing to the domU (under QEMU's emulation the figures"
        echo "show that both libraries' peers run there, not how fast real hardware is):"
        "$PERF_BIN" report "$WORK/bench.txt" || {
            echo "FAIL bench-report"
            fail=$((fail + 1))
        }
    fi
    # The unikernel guest's figures (issue 18): image size, memory, time to READY next to the
    # Linux domU's time to its first test, both from the start of `xl create`.
    if grep -q '^FIGURE ' "$WORK/console.log"; then
        echo "The unikernel guest next to the Linux domU (times under QEMU's emulation):"
        sed -n 's/^FIGURE /  /p' "$WORK/console.log"
    fi
    echo "qemu tier: wall time $(($(date +%s) - START)) s, console log $WORK/console.log"
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
}

mkdir -p "$CACHE" "$WORK"
install_packages
fetch_xen
build_programs
build_images
boot
judge
