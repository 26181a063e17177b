/*
 * Exercise our xenstore daemon through Xen's own libxenstore: a retried transaction, a conflict
 * that must fail with EAGAIN, a watch (with the initial event), permissions, a directory long
 * enough to need XS_DIRECTORY_PART, and domain introduction/release.
 * Build: cc -o xs_txn_watch xs_txn_watch.c -lxenstore; run with XENSTORED_PATH=<dir>/dom0.sock.
 * Prints one line per check and exits 0 only if all pass.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xenstore.h>

static int failures;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (cond) {                                                          \
            printf("ok   ");                                                 \
        } else {                                                             \
            printf("FAIL ");                                                 \
            failures++;                                                      \
        }                                                                    \
        printf(__VA_ARGS__);                                                 \
        printf(" (errno %d)\n", errno);                                      \
        fflush(stdout);                                                      \
    } while (0)

static bool read_is(struct xs_handle *h, const char *path, const char *want)
{
    unsigned int len;
    char *v = xs_read(h, XBT_NULL, path, &len);
    bool ok = v && len == strlen(want) && memcmp(v, want, len) == 0;
    free(v);
    return ok;
}

/* Wait for a watch event on `path` with `token`; other events are skipped. */
static bool wait_event(struct xs_handle *h, const char *path, const char *token)
{
    for (int i = 0; i < 100; i++) {
        unsigned int num;
        char **ev = xs_read_watch(h, &num);
        if (!ev)
            return false;
        bool match = !strcmp(ev[XS_WATCH_PATH], path) && !strcmp(ev[XS_WATCH_TOKEN], token);
        free(ev);
        if (match)
            return true;
    }
    return false;
}

int main(void)
{
    struct xs_handle *h = xs_open(0), *h2 = xs_open(0);
    if (!h || !h2) {
        perror("xs_open");
        return 2;
    }

    CHECK(xs_watch(h, "/cprog", "tok"), "watch /cprog");
    CHECK(wait_event(h, "/cprog", "tok"), "initial watch event");

    /* A transaction writing two keys, retried on EAGAIN. */
    bool committed = false;
    for (int i = 0; i < 10 && !committed; i++) {
        xs_transaction_t t = xs_transaction_start(h);
        if (t == XBT_NULL)
            break;
        xs_write(h, t, "/cprog/a", "1", 1);
        xs_write(h, t, "/cprog/b", "2", 1);
        committed = xs_transaction_end(h, t, false);
        if (!committed && errno != EAGAIN)
            break;
    }
    CHECK(committed, "transaction commit");
    CHECK(read_is(h, "/cprog/a", "1") && read_is(h2, "/cprog/b", "2"), "committed values visible");
    CHECK(wait_event(h, "/cprog/a", "tok"), "watch event for /cprog/a");
    CHECK(wait_event(h, "/cprog/b", "tok"), "watch event for /cprog/b");

    /* A conflicting transaction must fail with EAGAIN and change nothing. */
    xs_transaction_t t = xs_transaction_start(h);
    unsigned int len;
    free(xs_read(h, t, "/cprog/a", &len));
    xs_write(h2, XBT_NULL, "/cprog/a", "x", 1);
    xs_write(h, t, "/cprog/a", "y", 1);
    errno = 0;
    bool ended = xs_transaction_end(h, t, false);
    CHECK(!ended && errno == EAGAIN, "conflicting commit fails with EAGAIN");
    CHECK(read_is(h, "/cprog/a", "x"), "conflicting transaction left no trace");

    /* An aborted transaction leaves nothing. */
    t = xs_transaction_start(h);
    xs_write(h, t, "/cprog/aborted", "z", 1);
    CHECK(xs_transaction_end(h, t, true), "abort");
    errno = 0;
    CHECK(!xs_read(h, XBT_NULL, "/cprog/aborted", &len) && errno == ENOENT, "aborted write absent");

    /* Permissions. */
    struct xs_permissions perms[2] = {{.id = 0, .perms = XS_PERM_NONE}, {.id = 5, .perms = XS_PERM_READ}};
    CHECK(xs_set_permissions(h, XBT_NULL, "/cprog/a", perms, 2), "set permissions");
    unsigned int np = 0;
    struct xs_permissions *got = xs_get_permissions(h, XBT_NULL, "/cprog/a", &np);
    CHECK(got && np == 2 && got[0].id == 0 && got[0].perms == XS_PERM_NONE && got[1].id == 5 &&
              got[1].perms == XS_PERM_READ,
          "get permissions n0,r5");
    free(got);

    /* A directory longer than one message: libxenstore falls back to XS_DIRECTORY_PART. */
    char path[128];
    for (int i = 0; i < 300; i++) {
        snprintf(path, sizeof(path), "/cbig/a-fairly-long-child-name-%04d", i);
        xs_write(h, XBT_NULL, path, "", 0);
    }
    unsigned int num = 0;
    char **dir = xs_directory(h, XBT_NULL, "/cbig", &num);
    CHECK(dir && num == 300 && !strcmp(dir[299], "a-fairly-long-child-name-0299"), "300-entry directory (%u)", num);
    free(dir);
    CHECK(xs_rm(h, XBT_NULL, "/cbig"), "rm /cbig");

    /* Domains. */
    char *dp = xs_get_domain_path(h, 3);
    CHECK(dp && !strcmp(dp, "/local/domain/3"), "domain path of 3");
    free(dp);
    CHECK(xs_watch(h, "@introduceDomain", "in") && wait_event(h, "@introduceDomain", "in"), "watch @introduceDomain");
    CHECK(xs_watch(h, "@releaseDomain", "out") && wait_event(h, "@releaseDomain", "out"), "watch @releaseDomain");
    CHECK(xs_introduce_domain(h, 7, 0x1234, 5), "introduce 7");
    CHECK(wait_event(h, "@introduceDomain", "in"), "@introduceDomain fired");
    CHECK(xs_is_domain_introduced(h, 7), "7 is introduced");
    CHECK(xs_release_domain(h, 7), "release 7");
    CHECK(wait_event(h, "@releaseDomain", "out"), "@releaseDomain fired");
    CHECK(!xs_is_domain_introduced(h, 7), "7 is gone");

    CHECK(xs_unwatch(h, "/cprog", "tok"), "unwatch");
    errno = 0;
    CHECK(!xs_unwatch(h, "/cprog", "tok") && errno == ENOENT, "second unwatch is ENOENT");
    CHECK(xs_rm(h, XBT_NULL, "/cprog"), "rm /cprog");
    errno = 0;
    CHECK(!xs_write(h, XBT_NULL, "/bad//path", "v", 1) && errno == EINVAL, "invalid path is EINVAL");

    xs_close(h2);
    xs_close(h);
    printf(failures ? "FAILED %d\n" : "ALL OK\n", failures);
    return failures ? 1 : 0;
}
