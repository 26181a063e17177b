/*
 * vchan-peer: Debian's libxenvchan as the reference peer of the QEMU tier.
 *
 *   vchan-peer server CLIENT_DOMID PORT|PATH READ_MIN WRITE_MIN echo|recv|send BYTES
 *   vchan-peer client SERVER_DOMID PORT|PATH echo-check FILE|recv|send BYTES
 *
 * An integer PORT follows the convention the Rust side uses: server
 * "data/vchan/<client>/<port>" (relative to its home), client
 * "/local/domain/<server>/data/vchan/<me>/<port>"; any other PATH is the
 * xenstore path itself. The client retries until the server has published its
 * keys. `send BYTES` writes BYTES bytes, byte i being i % 251, then closes;
 * `recv` copies what arrives to stdout until the peer closes. Exit status 0
 * means the check held.
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

/* Write `bytes` bytes of the pattern i % 251, then return (the caller closes). */
static int send_pattern(struct libxenvchan *c, unsigned long long bytes)
{
    static char block[CHUNK + 251];
    unsigned long long sent = 0;

    for (size_t i = 0; i < sizeof(block); i++)
        block[i] = (char)(i % 251);
    while (sent < bytes) {
        size_t want = bytes - sent < CHUNK ? (size_t)(bytes - sent) : CHUNK;
        if (write_all(c, block + sent % 251, want) < 0) {
            fprintf(stderr, "vchan-peer: the peer went away after %llu of %llu bytes\n", sent, bytes);
            return 1;
        }
        sent += want;
    }
    fprintf(stderr, "vchan-peer: sent %llu bytes\n", sent);
    return 0;
}

/* Copy what arrives to stdout until the peer closes and the ring is empty. */
static int recv_all(struct libxenvchan *c)
{
    static char buf[CHUNK];
    unsigned long long total = 0;

    for (;;) {
        int n = libxenvchan_read(c, buf, sizeof(buf));
        if (n < 0)
            break;
        if (n == 0) {
            if (libxenvchan_wait(c) < 0)
                return die("wait");
            continue;
        }
        if (fwrite(buf, 1, n, stdout) != (size_t)n)
            return die("write stdout");
        total += n;
    }
    if (fflush(stdout) != 0)
        return die("flush stdout");
    fprintf(stderr, "vchan-peer: received %llu bytes\n", total);
    return 0;
}

/* `data/vchan/<client>/<port>` (server, relative) or the path itself. */
static void server_path(char *path, size_t len, const char *client, const char *where)
{
    if (where[0] && strspn(where, "0123456789") == strlen(where))
        snprintf(path, len, "data/vchan/%s/%s", client, where);
    else
        snprintf(path, len, "%s", where);
}

/* `/local/domain/<server>/data/vchan/<me>/<port>` (client) or the path itself. */
static void client_path(char *path, size_t len, const char *server, int me, const char *where)
{
    if (where[0] && strspn(where, "0123456789") == strlen(where))
        snprintf(path, len, "/local/domain/%s/data/vchan/%d/%s", server, me, where);
    else
        snprintf(path, len, "%s", where);
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

/* Run a server or client mode: echo, echo-check FILE, recv, send BYTES. -1: unknown. */
static int run_mode(struct libxenvchan *c, int is_server, int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "recv") == 0)
        return recv_all(c);
    if (argc >= 2 && strcmp(argv[0], "send") == 0)
        return send_pattern(c, strtoull(argv[1], NULL, 10));
    if (is_server && argc >= 1 && strcmp(argv[0], "echo") == 0)
        return serve_echo(c);
    if (!is_server && argc >= 2 && strcmp(argv[0], "echo-check") == 0)
        return echo_check(c, argv[1]);
    return -1;
}

int main(int argc, char **argv)
{
    char path[256];
    struct libxenvchan *c = NULL;
    int rc;

    if (argc >= 7 && strcmp(argv[1], "server") == 0) {
        server_path(path, sizeof(path), argv[2], argv[3]);
        c = libxenvchan_server_init(NULL, atoi(argv[2]), path, atoi(argv[4]), atoi(argv[5]));
        if (!c)
            return die("libxenvchan_server_init");
        c->blocking = 0;
        rc = run_mode(c, 1, argc - 6, argv + 6);
    } else if (argc >= 5 && strcmp(argv[1], "client") == 0) {
        int me = own_domid();
        struct timespec pause = {0, 50 * 1000 * 1000};
        if (me < 0)
            return die("read own domid");
        client_path(path, sizeof(path), argv[2], me, argv[3]);
        for (int tries = 0; !c && tries < 1800; tries++) { /* 90 s */
            c = libxenvchan_client_init(NULL, atoi(argv[2]), path);
            if (!c)
                nanosleep(&pause, NULL);
        }
        if (!c)
            return die("libxenvchan_client_init");
        c->blocking = 0;
        rc = run_mode(c, 0, argc - 4, argv + 4);
    } else {
        rc = -1;
    }
    if (rc < 0) {
        fprintf(stderr, "usage: %s server CLIENT PORT|PATH READ_MIN WRITE_MIN echo|recv|send BYTES\n"
                        "       %s client SERVER PORT|PATH echo-check FILE|recv|send BYTES\n",
                argv[0], argv[0]);
        if (c)
            libxenvchan_close(c);
        return 2;
    }
    libxenvchan_close(c);
    return rc;
}
