/*
 * vchan-peer: Debian's libxenvchan as the reference peer of the QEMU tier.
 *
 *   vchan-peer server CLIENT_DOMID PORT READ_MIN WRITE_MIN echo
 *   vchan-peer client SERVER_DOMID PORT echo-check FILE
 *
 * The xenstore path follows the convention the Rust side uses:
 * server "data/vchan/<client>/<port>" (relative to its home), client
 * "/local/domain/<server>/data/vchan/<me>/<port>". The client retries until the
 * server has published its keys. Exit status 0 means the check held.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libxenvchan.h>
#include <xenstore.h>

#define CHUNK 65536

static int die(const char *what)
{
    fprintf(stderr, "vchan-peer: %s: %s\n", what, strerror(errno));
    return 1;
}

static int own_domid(void)
{
    struct xs_handle *xs = xs_open(0);
    unsigned int len;
    char *value;
    int domid;

    if (!xs)
        return -1;
    value = xs_read(xs, XBT_NULL, "domid", &len);
    domid = value ? atoi(value) : -1;
    free(value);
    xs_close(xs);
    return domid;
}

/* Write all of buf, waiting as needed; -1 if the peer went away. */
static int write_all(struct libxenvchan *c, const char *buf, size_t len)
{
    while (len > 0) {
        int n = libxenvchan_write(c, buf, len);
        if (n < 0)
            return -1;
        if (n == 0) {
            if (!libxenvchan_is_open(c) || libxenvchan_wait(c) < 0)
                return -1;
            continue;
        }
        buf += n;
        len -= n;
    }
    return 0;
}

static int serve_echo(struct libxenvchan *c)
{
    static char buf[CHUNK];
    size_t total = 0;

    for (;;) {
        int n = libxenvchan_read(c, buf, sizeof(buf));
        if (n < 0)
            break; /* the client closed and the ring is empty */
        if (n == 0) {
            if (libxenvchan_wait(c) < 0)
                return die("wait");
            continue;
        }
        if (write_all(c, buf, n) < 0)
            return die("echo write");
        total += n;
    }
    fprintf(stderr, "vchan-peer: echoed %zu bytes\n", total);
    return 0;
}

static int echo_check(struct libxenvchan *c, const char *file)
{
    struct stat st;
    char *data, *back;
    size_t sent = 0, got = 0, len;
    int fd = open(file, O_RDONLY);

    if (fd < 0 || fstat(fd, &st) < 0)
        return die(file);
    len = st.st_size;
    data = malloc(len);
    back = malloc(len);
    if (!data || !back || read(fd, data, len) != (ssize_t)len)
        return die("read payload");
    close(fd);

    while (got < len) {
        int progress = 0, n;
        if (sent < len) {
            size_t want = len - sent < CHUNK ? len - sent : CHUNK;
            n = libxenvchan_write(c, data + sent, want);
            if (n < 0)
                return die("write");
            sent += n;
            progress |= n > 0;
        }
        n = libxenvchan_read(c, back + got, len - got);
        if (n < 0)
            return die("read (peer closed early)");
        got += n;
        progress |= n > 0;
        if (!progress && libxenvchan_wait(c) < 0)
            return die("wait");
    }
    if (memcmp(data, back, len) != 0) {
        fprintf(stderr, "vchan-peer: echoed data differs\n");
        return 1;
    }
    fprintf(stderr, "vchan-peer: %zu bytes came back intact\n", len);
    return 0;
}

int main(int argc, char **argv)
{
    char path[256];
    struct libxenvchan *c = NULL;
    int rc;

    if (argc >= 7 && strcmp(argv[1], "server") == 0 && strcmp(argv[6], "echo") == 0) {
        snprintf(path, sizeof(path), "data/vchan/%s/%s", argv[2], argv[3]);
        c = libxenvchan_server_init(NULL, atoi(argv[2]), path, atoi(argv[4]), atoi(argv[5]));
        if (!c)
            return die("libxenvchan_server_init");
        c->blocking = 0;
        rc = serve_echo(c);
    } else if (argc >= 6 && strcmp(argv[1], "client") == 0 && strcmp(argv[4], "echo-check") == 0) {
        int me = own_domid();
        struct timespec pause = {0, 50 * 1000 * 1000};
        if (me < 0)
            return die("read own domid");
        snprintf(path, sizeof(path), "/local/domain/%s/data/vchan/%d/%s", argv[2], me, argv[3]);
        for (int tries = 0; !c && tries < 1800; tries++) { /* 90 s */
            c = libxenvchan_client_init(NULL, atoi(argv[2]), path);
            if (!c)
                nanosleep(&pause, NULL);
        }
        if (!c)
            return die("libxenvchan_client_init");
        c->blocking = 0;
        rc = echo_check(c, argv[5]);
    } else {
        fprintf(stderr, "usage: %s server CLIENT PORT READ_MIN WRITE_MIN echo\n"
                        "       %s client SERVER PORT echo-check FILE\n", argv[0], argv[0]);
        return 2;
    }
    libxenvchan_close(c);
    return rc;
}
