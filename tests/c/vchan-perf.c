/*
 * vchan-perf: the C peer of `vchan-perf` (tools/src/bin/vchan-perf.rs), over Debian's unmodified
 * libxenvchan, so that the same measurement runs with either library at either end.
 *
 *   vchan-perf server CLIENT_DOMID PORT RING_MIN stream|pingpong MSG_SIZE COUNT
 *   vchan-perf client SERVER_DOMID PORT stream|pingpong MSG_SIZE COUNT
 *   vchan-perf loopback DOMID PORT RING_MIN stream|pingpong MSG_SIZE COUNT
 *   vchan-perf ops DOMID PORT RING_MIN MSG_SIZE COUNT
 *
 * PORT names the conventional path data/vchan/<client>/<PORT> under the server's home. RING_MIN
 * is the minimum size of both rings (0: the 1024/2048-byte rings inside the control page).
 *
 * stream: the server waits for its client, writes COUNT bytes in blocking writes of MSG_SIZE
 * bytes from one buffer, and closes. The client reads with a MSG_SIZE buffer until it has COUNT
 * bytes, checks the first and last byte of every read against the pattern and that EOF follows,
 * and prints "stream BYTES NANOSECONDS": the bytes that arrived after its first read and the time
 * from that read to the last byte (connecting and xenstore are not timed).
 *
 * pingpong: WARMUP untimed rounds, then COUNT timed rounds; in each the client sends MSG_SIZE
 * bytes as one packet and the server receives and sends them back. The client checks every echo
 * and prints "pingpong ROUNDS P50_NS P99_NS" (nearest-rank percentiles of the round-trip times).
 *
 * loopback: both ends in this process, in this domain (DOMID is its id): the server in a second
 * thread, the client in the first, which prints its line as `client` does.
 *
 * ops: the cost of the calls themselves, for an instruction count (scripts/callgrind): one thread
 * holds both ends (loopback, non-blocking) and makes COUNT rounds of one write of MSG_SIZE bytes
 * and the reads that take them, so no peer waits and no event is owed; prints "ops CALLS".
 *
 * Errors: one line on stderr, exit status 1 (2 for bad arguments).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libxenvchan.h>
#include <xenstore.h>

/* Untimed rounds before a ping-pong measurement; the Rust peer uses the same number. */
#define WARMUP 1000
/* How long a client waits for its server to publish itself. */
#define CONNECT_WAIT_MS 10000

static const char *role = "vchan-perf";

static void fail(const char *what)
{
    fprintf(stderr, "vchan-perf (C %s): %s\n", role, what);
    exit(1);
}

static void fail_errno(const char *what)
{
    fprintf(stderr, "vchan-perf (C %s): %s: %s\n", role, what, strerror(errno));
    exit(1);
}

static void usage(void)
{
    fprintf(stderr, "usage: vchan-perf server CLIENT_DOMID PORT RING_MIN stream|pingpong MSG_SIZE COUNT"
                    " | vchan-perf client SERVER_DOMID PORT stream|pingpong MSG_SIZE COUNT"
                    " | vchan-perf loopback DOMID PORT RING_MIN stream|pingpong MSG_SIZE COUNT"
                    " | vchan-perf ops DOMID PORT RING_MIN MSG_SIZE COUNT\n");
    exit(2);
}

static unsigned long long number(const char *text)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-')
        usage();
    return v;
}

/* The byte at offset j of the sender's buffer; the stream is that buffer repeated. Shared with
 * the Rust peer (`pattern_byte`). */
static uint8_t pattern_byte(uint64_t j)
{
    return (uint8_t)(((uint32_t)j * 0x9E3779B1u) >> 24);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        fail("out of memory");
    return p;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank: the smallest value with at least p% of the values at or below it. */
static uint64_t percentile(const uint64_t *sorted, uint64_t n, unsigned p)
{
    uint64_t rank = (n * p + 99) / 100;
    return sorted[rank ? rank - 1 : 0];
}

static void serve(int client, const char *path, size_t ring_min, int stream, size_t msg, uint64_t count)
{
    struct libxenvchan *ctrl = libxenvchan_server_init(NULL, client, path, ring_min, ring_min);
    if (!ctrl)
        fail_errno("libxenvchan_server_init");
    ctrl->blocking = 1;
    /* The client's connect sends an event; whoever started this peer kills it if none comes. */
    while (libxenvchan_is_open(ctrl) == 2) {
        if (libxenvchan_wait(ctrl) < 0)
            fail_errno("libxenvchan_wait");
    }
    char *buf = xmalloc(msg);
    if (stream) {
        for (size_t j = 0; j < msg; j++)
            buf[j] = (char)pattern_byte(j);
        uint64_t left = count;
        while (left > 0) {
            size_t n = left < msg ? (size_t)left : msg;
            /* Blocking: returns n once all of it is in the ring, -1 if the peer closed. */
            if (libxenvchan_write(ctrl, buf, n) != (int)n)
                fail("the client closed before it took everything");
            left -= n;
        }
    } else {
        for (uint64_t round = 0; round < WARMUP + count; round++) {
            if (libxenvchan_recv(ctrl, buf, msg) != (int)msg)
                fail("the client closed in the middle of the ping-pong");
            if (libxenvchan_send(ctrl, buf, msg) != (int)msg)
                fail("the client closed in the middle of the ping-pong");
        }
    }
    free(buf);
    libxenvchan_close(ctrl);
}

/* This domain's id, from its xenstore home (libxenvchan's client wants it in the path). */
static int own_domid(void)
{
    struct xs_handle *xs = xs_open(0);
    if (!xs)
        fail_errno("xs_open");
    unsigned int len;
    char *text = xs_read(xs, XBT_NULL, "domid", &len);
    if (!text)
        fail_errno("xs_read domid");
    int domid = atoi(text);
    free(text);
    xs_close(xs);
    return domid;
}

static void connect_and_run(int server, unsigned long port, int stream, size_t msg, uint64_t count)
{
    char path[128];
    snprintf(path, sizeof path, "/local/domain/%d/data/vchan/%d/%lu", server, own_domid(), port);
    struct libxenvchan *ctrl;
    uint64_t deadline = now_ns() + (uint64_t)CONNECT_WAIT_MS * 1000000u;
    /* libxenvchan_client_init fails at once while the server has not published its keys. */
    while (!(ctrl = libxenvchan_client_init(NULL, server, path))) {
        if (now_ns() > deadline)
            fail_errno("no server appeared within 10 s (libxenvchan_client_init)");
        usleep(5000);
    }
    ctrl->blocking = 1;
    char *buf = xmalloc(msg);
    if (stream) {
        uint64_t got = 0, start = 0, first = 0;
        while (got < count) {
            int n = libxenvchan_read(ctrl, buf, msg);
            if (n <= 0) {
                fprintf(stderr, "vchan-perf (C client): the server closed after %llu of %llu bytes\n",
                        (unsigned long long)got, (unsigned long long)count);
                exit(1);
            }
            if (got == 0) {
                start = now_ns();
                first = (uint64_t)n;
            }
            if ((uint8_t)buf[0] != pattern_byte(got % msg) ||
                (uint8_t)buf[n - 1] != pattern_byte((got + (uint64_t)n - 1) % msg))
                fail("the stream does not hold the bytes the server wrote");
            got += (uint64_t)n;
        }
        uint64_t elapsed = now_ns() - start;
        if (got != count)
            fail("the server sent more bytes than asked for");
        /* Closed and empty reads as -1 in blocking mode; anything else is extra data. */
        if (libxenvchan_read(ctrl, buf, msg) >= 0 || libxenvchan_is_open(ctrl))
            fail("the server sent more bytes than asked for");
        printf("stream %llu %llu\n", (unsigned long long)(got - first), (unsigned long long)elapsed);
    } else {
        char *back = xmalloc(msg);
        uint64_t *rtt = xmalloc(count * sizeof *rtt);
        for (size_t j = 0; j < msg; j++)
            buf[j] = (char)pattern_byte(j);
        for (uint64_t round = 0; round < WARMUP + count; round++) {
            /* Stamp the round so that a stale echo cannot pass. */
            memcpy(buf, &round, msg < sizeof round ? msg : sizeof round);
            uint64_t t = now_ns();
            if (libxenvchan_send(ctrl, buf, msg) != (int)msg)
                fail("the server closed in the middle of the ping-pong");
            if (libxenvchan_recv(ctrl, back, msg) != (int)msg)
                fail("the server closed in the middle of the ping-pong");
            uint64_t dt = now_ns() - t;
            if (memcmp(buf, back, msg))
                fail("the echo differs from what was sent");
            if (round >= WARMUP)
                rtt[round - WARMUP] = dt;
        }
        qsort(rtt, count, sizeof *rtt, cmp_u64);
        printf("pingpong %llu %llu %llu\n", (unsigned long long)count,
               (unsigned long long)percentile(rtt, count, 50),
               (unsigned long long)percentile(rtt, count, 99));
        free(rtt);
        free(back);
    }
    free(buf);
    libxenvchan_close(ctrl);
}

/* Both ends in this thread, non-blocking: COUNT rounds of a write and the reads that drain it. */
static void ops(int domid, const char *path, unsigned long port, size_t ring_min, size_t msg, uint64_t count)
{
    struct libxenvchan *server = libxenvchan_server_init(NULL, domid, path, ring_min, ring_min);
    if (!server)
        fail_errno("libxenvchan_server_init");
    char client_path[128];
    snprintf(client_path, sizeof client_path, "/local/domain/%d/data/vchan/%d/%lu", domid, domid, port);
    struct libxenvchan *client = libxenvchan_client_init(NULL, domid, client_path);
    if (!client)
        fail_errno("libxenvchan_client_init");
    server->blocking = 0;
    client->blocking = 0;
    char *buf = xmalloc(msg), *back = xmalloc(msg);
    for (size_t j = 0; j < msg; j++)
        buf[j] = (char)pattern_byte(j);
    uint64_t calls = 0;
    for (uint64_t round = 0; round < count; round++) {
        size_t done = 0;
        while (done < msg) {
            int n = libxenvchan_write(server, buf + done, msg - done);
            int m = libxenvchan_read(client, back, msg);
            calls += 2;
            if (n <= 0 || m != n || memcmp(back, buf + done, (size_t)n))
                fail("a round lost or changed bytes");
            done += (size_t)n;
        }
    }
    printf("ops %llu\n", (unsigned long long)calls);
    free(back);
    free(buf);
    libxenvchan_close(client);
    libxenvchan_close(server);
}

/* The server of a loopback run, in its own thread. */
struct serving {
    int client;
    const char *path;
    size_t ring_min;
    int stream;
    size_t msg;
    uint64_t count;
};

static void *serve_thread(void *arg)
{
    struct serving *s = arg;
    serve(s->client, s->path, s->ring_min, s->stream, s->msg, s->count);
    return NULL;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2)
        usage();
    if (!strcmp(argv[1], "ops")) {
        role = "ops";
        if (argc != 7)
            usage();
        unsigned long long domid = number(argv[2]), port = number(argv[3]);
        unsigned long long ring_min = number(argv[4]), msg = number(argv[5]), count = number(argv[6]);
        if (domid >= 0x7ff0 || port > 0xffffffffull || msg == 0 || msg > (1u << 30))
            usage();
        char path[64];
        snprintf(path, sizeof path, "data/vchan/%llu/%llu", domid, port);
        ops((int)domid, path, (unsigned long)port, (size_t)ring_min, (size_t)msg, count);
        if (fflush(stdout) != 0)
            fail_errno("write stdout");
        return 0;
    }
    int loopback = !strcmp(argv[1], "loopback");
    int server = loopback || !strcmp(argv[1], "server");
    if (!server && strcmp(argv[1], "client"))
        usage();
    role = argv[1];
    if (argc != (server ? 8 : 7))
        usage();
    unsigned long long domid = number(argv[2]), port = number(argv[3]);
    if (domid >= 0x7ff0 || port > 0xffffffffull)
        usage();
    int i = 4;
    size_t ring_min = server ? (size_t)number(argv[i++]) : 0;
    int stream = !strcmp(argv[i], "stream");
    if (!stream && strcmp(argv[i], "pingpong"))
        usage();
    unsigned long long msg = number(argv[i + 1]), count = number(argv[i + 2]);
    if (msg == 0 || msg > (1u << 30) || (!stream && count == 0))
        usage();
    if (loopback) {
        char path[64];
        snprintf(path, sizeof path, "data/vchan/%llu/%llu", domid, port);
        struct serving s = {(int)domid, path, ring_min, stream, (size_t)msg, count};
        pthread_t thread;
        if ((errno = pthread_create(&thread, NULL, serve_thread, &s)))
            fail_errno("pthread_create");
        connect_and_run((int)domid, (unsigned long)port, stream, (size_t)msg, count);
        if ((errno = pthread_join(thread, NULL)))
            fail_errno("pthread_join");
    } else if (server) {
        char path[64];
        snprintf(path, sizeof path, "data/vchan/%llu/%llu", domid, port);
        serve((int)domid, path, ring_min, stream, (size_t)msg, count);
    } else {
        connect_and_run((int)domid, (unsigned long)port, stream, (size_t)msg, count);
    }
    if (fflush(stdout) != 0)
        fail_errno("write stdout");
    return 0;
}
