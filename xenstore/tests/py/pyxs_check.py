"""Exercise our xenstore daemon through pyxs (Debian python3-pyxs).

Run with XENSTORED_PATH=<dir>/dom0.sock; prints one line per check, exits 0 only if all pass.
"""
import errno
import sys

from pyxs import Client, PyXSError

failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1


with Client() as c:
    c.write(b"/py/a", b"1")
    c.mkdir(b"/py/dir")
    check(c.read(b"/py/a") == b"1", "write/read")
    check(sorted(c.list(b"/py")) == [b"a", b"dir"], "list")
    check(c.exists(b"/py/dir") and not c.exists(b"/py/nope"), "exists")
    c.set_perms(b"/py/a", [b"n0", b"r5"])
    check(c.get_perms(b"/py/a") == [b"n0", b"r5"], "perms")
    check(c.get_domain_path(4) == b"/local/domain/4", "domain path")
    try:
        c.read(b"/py/nope")
        check(False, "read of a missing node fails")
    except PyXSError as e:
        check(e.args[0] == errno.ENOENT, "read of a missing node is ENOENT")

    # A transaction, committed.
    c.transaction()
    c.write(b"/py/t", b"x")
    check(c.commit(), "transaction commit")
    check(c.read(b"/py/t") == b"x", "transaction result visible")

    # A watch: the initial event, then a change below the path.
    with c.monitor() as m:
        m.watch(b"/py", b"tok")
        events = m.wait()
        first = next(events)
        check(first.path == b"/py" and first.token == b"tok", "initial watch event")
        c.write(b"/py/dir/k", b"v")
        second = next(events)
        check(second.path == b"/py/dir/k", "watch event for a write below")

    c.delete(b"/py")
    check(not c.exists(b"/py"), "delete")

print("ALL OK" if not failures else "FAILED %d" % failures)
sys.exit(1 if failures else 0)
