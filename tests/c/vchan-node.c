/*
 * vchan-node: one direction of a vchan in blocking mode, the way Xen's tools/vchan/node.c uses
 * libxenvchan (written for this project; built against Debian's <libxenvchan.h>):
 *
 *   vchan-node [-p] server DOMID PATH READ_MIN WRITE_MIN read|write
 *   vchan-node [-p] client DOMID PATH read|write
 *
 * It sets ctrl->blocking itself (as node.c does) and moves stdin to the peer ("write") or the
 * peer to stdout ("read") in chunks of pseudo-random sizes: the writer's up to three rings long
 * (so one blocking libxenvchan_write fills and waits several times), the reader's up to twice
 * its ring. A writer closes the channel at the end of its input; a reader reads until
 * libxenvchan_read returns -1, which must then mean "closed" (libxenvchan_is_open says 0).
 *
 * -p: packets. The writer sends each chunk with libxenvchan_send (chunks up to one ring long,
 * taken from ctrl->write.order) and the reader receives the same sizes with libxenvchan_recv
 * (both draw them from the same sequence); the last chunk may be short, so once recv fails with
 * the channel closed the reader takes what is left with libxenvchan_read.
 *
 * Exits 0 when everything moved, 1 (saying why on stderr) otherwise.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libxenvchan.h>

static uint64_t state = 0x9e3779b97f4a7c15ull;

/* The chunk sizes, 1..max, the same sequence on both sides. */
static size_t next_size(size_t max)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return 1 + (size_t)(state % max);
}

static void fail(const char *what)
{
    fprintf(stderr, "vchan-node: %s: %s\n", what, strerror(errno));
    exit(1);
}

static size_t read_full(int fd, char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail("read stdin");
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return got;
}

static void write_full(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail("write stdout");
        buf += n;
        len -= (size_t)n;
    }
}

static void writer(struct libxenvchan *ctrl, int packets)
{
    size_t ring = (size_t)1 << ctrl->write.order;
    size_t max = packets ? ring : 3 * ring;
    char *buf = malloc(max);
    if (!buf)
        fail("malloc");
    for (;;) {
        size_t want = next_size(max);
        size_t len = read_full(0, buf, want);
        if (len == 0)
            break;
        int n = packets ? libxenvchan_send(ctrl, buf, len) : libxenvchan_write(ctrl, buf, len);
        if (n != (int)len) {
            fprintf(stderr, "vchan-node: %s of %zu bytes returned %d: %s\n",
                    packets ? "libxenvchan_send" : "libxenvchan_write", len, n, strerror(errno));
            exit(1);
        }
        if (len < want)
            break;
    }
    free(buf);
}

static void reader(struct libxenvchan *ctrl, int packets)
{
    size_t ring = (size_t)1 << ctrl->read.order;
    size_t max = packets ? ring : 2 * ring;
    char *buf = malloc(max);
    if (!buf)
        fail("malloc");
    while (packets) {
        size_t want = next_size(max);
        int n = libxenvchan_recv(ctrl, buf, want);
        if (n < 0)
            break; /* closed with fewer bytes left: the last, short chunk */
        if (n != (int)want) {
            fprintf(stderr, "vchan-node: blocking libxenvchan_recv of %zu returned %d\n", want, n);
            exit(1);
        }
        write_full(1, buf, want);
    }
    for (;;) {
        int n = libxenvchan_read(ctrl, buf, next_size(max));
        if (n < 0)
            break;
        if (n == 0) {
            fprintf(stderr, "vchan-node: blocking libxenvchan_read returned 0\n");
            exit(1);
        }
        write_full(1, buf, (size_t)n);
    }
    if (libxenvchan_is_open(ctrl) != 0) {
        fprintf(stderr, "vchan-node: libxenvchan_read failed on an open channel: %s\n",
                strerror(errno));
        exit(1);
    }
    free(buf);
}

int main(int argc, char **argv)
{
    int packets = 0, argi = 1;
    if (argi < argc && !strcmp(argv[argi], "-p")) {
        packets = 1;
        argi++;
    }
    int server = argi < argc && !strcmp(argv[argi], "server");
    if (argc - argi != (server ? 6 : 4) || (!server && strcmp(argv[argi], "client"))) {
        fprintf(stderr, "usage: vchan-node [-p] server DOMID PATH READ_MIN WRITE_MIN read|write\n"
                        "       vchan-node [-p] client DOMID PATH read|write\n");
        return 2;
    }
    int domid = atoi(argv[argi + 1]);
    const char *path = argv[argi + 2];
    const char *dir = argv[argc - 1];
    struct libxenvchan *ctrl =
        server ? libxenvchan_server_init(NULL, domid, path, strtoul(argv[argi + 3], NULL, 0),
                                         strtoul(argv[argi + 4], NULL, 0))
               : libxenvchan_client_init(NULL, domid, path);
    if (!ctrl)
        fail(server ? "libxenvchan_server_init" : "libxenvchan_client_init");
    ctrl->blocking = 1;
    if (!strcmp(dir, "write"))
        writer(ctrl, packets);
    else if (!strcmp(dir, "read"))
        reader(ctrl, packets);
    else {
        fprintf(stderr, "vchan-node: read or write, not %s\n", dir);
        return 2;
    }
    libxenvchan_close(ctrl);
    return 0;
}
