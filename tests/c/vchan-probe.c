/*
 * vchan-probe: checks of libxenvchan's ABI and behaviour, built against Debian's <libxenvchan.h>
 * and run on either library (the drop-in, by LD_LIBRARY_PATH, or Debian's). The test that runs
 * it (tests/tests/libxenvchan_*.rs) plays the other side and judges the lines it prints.
 *
 *   vchan-probe layout                              offsets and flag bits, from the header
 *   vchan-probe init-errors DOMID                   failures of the init calls, with errno
 *   vchan-probe server DOMID PATH READ_MIN WRITE_MIN SCENARIO [ARG]
 *   vchan-probe client DOMID PATH SCENARIO [ARG]
 *
 * Scenarios:
 *   fields            print the struct's fields as the library set them, check the event
 *                     handle and the fd, then hold a short conversation with a peer running
 *                     the same scenario (flags rewritten between calls), and read until closed
 *   read-until-error  blocking reads until one fails; print the failure
 *   select-loop       vchan-socket-proxy's loop: select, wait, is_open, drain with data_ready;
 *                     print how it ends
 *   write-until-error SIZE   one blocking write of SIZE bytes, then another of 1; print both
 *   watch-open        wait for events until is_open changes from 1; print what it says
 *   signal-write SIZE restart|interrupt
 *                     a SIGUSR1 handler with or without SA_RESTART, then one blocking write
 *   oversize          packets one byte larger than the rings, in both modes
 *   persist           (server) server_persist set: two clients in turn, then cleared
 *
 * Every result line is "name value [errno]"; the last line is "done". Exit status 1 means the
 * probe itself could not run (it says why).
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include <libxenvchan.h>

static const char *errno_name(int e)
{
    switch (e) {
    case 0: return "0";
    case EPROTO: return "EPROTO";
    case EPIPE: return "EPIPE";
    case EMSGSIZE: return "EMSGSIZE";
    case EINTR: return "EINTR";
    case EINVAL: return "EINVAL";
    case ENOENT: return "ENOENT";
    case EBUSY: return "EBUSY";
    case EAGAIN: return "EAGAIN";
    case EACCES: return "EACCES";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "errno%d", e);
        return buf;
    }
    }
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void die(const char *what)
{
    fprintf(stderr, "vchan-probe: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* The byte that holds the three flag bits: where the header puts them. */
static int flag_bit(void (*set)(struct libxenvchan *))
{
    struct libxenvchan probe;
    memset(&probe, 0, sizeof probe);
    set(&probe);
    const unsigned char *bytes = (const unsigned char *)&probe;
    for (size_t i = 0; i < sizeof probe; i++)
        if (bytes[i])
            return (int)(i * 256 + bytes[i]);
    return -1;
}
static void set_is_server(struct libxenvchan *c) { c->is_server = 1; }
static void set_persist(struct libxenvchan *c) { c->server_persist = 1; }
static void set_blocking(struct libxenvchan *c) { c->blocking = 1; }

static void layout(void)
{
    say("sizeof %zu", sizeof(struct libxenvchan));
    say("alignof %zu", _Alignof(struct libxenvchan));
    say("gnt %zu", offsetof(struct libxenvchan, gntshr));
    say("gnttab %zu", offsetof(struct libxenvchan, gnttab));
    say("ring %zu", offsetof(struct libxenvchan, ring));
    say("event %zu", offsetof(struct libxenvchan, event));
    say("event_port %zu", offsetof(struct libxenvchan, event_port));
    say("read %zu", offsetof(struct libxenvchan, read));
    say("write %zu", offsetof(struct libxenvchan, write));
    say("xs_path %zu", offsetof(struct libxenvchan, xs_path));
    say("ring.shr %zu", offsetof(struct libxenvchan_ring, shr));
    say("ring.buffer %zu", offsetof(struct libxenvchan_ring, buffer));
    say("ring.order %zu", offsetof(struct libxenvchan_ring, order));
    say("ring.sizeof %zu", sizeof(struct libxenvchan_ring));
    /* byte offset * 256 + the bit's value */
    say("is_server %d", flag_bit(set_is_server));
    say("server_persist %d", flag_bit(set_persist));
    say("blocking %d", flag_bit(set_blocking));
    say("vchan_interface.left %zu", offsetof(struct vchan_interface, left));
    say("vchan_interface.right %zu", offsetof(struct vchan_interface, right));
    say("done");
}

static void init_errors(int domid)
{
    errno = 0;
    struct libxenvchan *c = libxenvchan_server_init(NULL, domid, "data/vchan/probe/oversize",
                                                    (2 << 20), 0);
    say("server_init-oversize %s %s", c ? "handle" : "NULL", errno_name(errno));
    if (c)
        libxenvchan_close(c);
    errno = 0;
    c = libxenvchan_client_init(NULL, domid, "/local/domain/0/data/vchan/probe/nobody");
    say("client_init-missing %s %s", c ? "handle" : "NULL", errno_name(errno));
    if (c)
        libxenvchan_close(c);
    say("done");
}

/* The descriptors open before the library was called (inherited ones are not its business). */
#define MAX_FDS 4096
static unsigned char inherited[MAX_FDS];

static void note_inherited(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        die("opendir /proc/self/fd");
    struct dirent *e;
    while ((e = readdir(d))) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd >= 0 && fd < MAX_FDS)
            inherited[fd] = 1;
    }
    closedir(d);
}

/* Every descriptor the library opened is close-on-exec. */
static void check_cloexec(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        die("opendir /proc/self/fd");
    int lacking = 0, checked = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd == dirfd(d) || (fd < MAX_FDS && inherited[fd]))
            continue;
        int flags = fcntl(fd, F_GETFD);
        checked++;
        if (flags >= 0 && !(flags & FD_CLOEXEC)) {
            say("cloexec-missing fd %d", fd);
            lacking++;
        }
    }
    closedir(d);
    say("cloexec %s (%d descriptors opened)", lacking ? "missing" : "all", checked);
}

/* Where a pointer into the shared memory lies, relative to the control page. */
static void where(const char *name, struct libxenvchan *c, const void *p)
{
    ptrdiff_t off = (const char *)p - (const char *)c->ring;
    if (off >= 0 && off < 4096)
        say("%s +%td", name, off);
    else
        say("%s pages", name);
}

static void print_fields(struct libxenvchan *c)
{
    say("is_server %d", c->is_server ? 1 : 0);
    say("server_persist %d", c->server_persist ? 1 : 0);
    say("blocking %d", c->blocking ? 1 : 0);
    say("read.order %d", c->read.order);
    say("write.order %d", c->write.order);
    where("read.shr", c, c->read.shr);
    where("write.shr", c, c->write.shr);
    where("read.buffer", c, c->read.buffer);
    where("write.buffer", c, c->write.buffer);
    say("xs_path %s", c->xs_path && c->is_server ? c->xs_path : "NULL");
    say("live cli %d srv %d", c->ring->cli_live, c->ring->srv_live);
    say("gnt %s", c->gntshr ? "set" : "NULL");
    say("fd_for_select %s", libxenvchan_fd_for_select(c) == xenevtchn_fd(c->event) ? "matches" : "differs");
    say("notify-through-event %d", xenevtchn_notify(c->event, c->event_port));
    say("event_port %s", c->event_port ? "set" : "0");
    check_cloexec();
}

static void need(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "vchan-probe: %s (errno %s)\n", what, errno_name(errno));
        exit(1);
    }
}

/* A blocking exchange in both directions, flags rewritten between calls. */
static void conversation(struct libxenvchan *c, int server)
{
    char buf[16];
    if (server) {
        while (libxenvchan_is_open(c) == 2)
            need(libxenvchan_wait(c) == 0, "wait for the client");
        say("is_open-connected %d", libxenvchan_is_open(c));
        c->blocking = 1;
        need(libxenvchan_recv(c, buf, 4) == 4 && !memcmp(buf, "ping", 4), "recv ping");
        need(libxenvchan_send(c, "pong", 4) == 4, "send pong");
        /* The client sends nothing until it has "go": a non-blocking read finds nothing. */
        c->blocking = 0;
        say("nonblocking-read %d", libxenvchan_read(c, buf, sizeof buf));
        say("nonblocking-recv %d", libxenvchan_recv(c, buf, 6));
        need(libxenvchan_send(c, "go", 2) == 2, "send go");
        /* "sec", a pause, "ond": only a blocking recv gets all six at once. */
        c->blocking = -1;
        int n = libxenvchan_recv(c, buf, 6);
        say("blocking-recv %d %.6s", n, n == 6 ? buf : "");
        errno = 0;
        n = libxenvchan_read(c, buf, sizeof buf);
        say("read-after-close %d %s", n, errno_name(n < 0 ? errno : 0));
        say("is_open-after-close %d", libxenvchan_is_open(c));
    } else {
        c->blocking = 1;
        need(libxenvchan_send(c, "ping", 4) == 4, "send ping");
        need(libxenvchan_recv(c, buf, 4) == 4 && !memcmp(buf, "pong", 4), "recv pong");
        need(libxenvchan_recv(c, buf, 2) == 2 && !memcmp(buf, "go", 2), "recv go");
        need(libxenvchan_write(c, "sec", 3) == 3, "write sec");
        usleep(300 * 1000);
        need(libxenvchan_write(c, "ond", 3) == 3, "write ond");
        say("sent second");
    }
}

static void read_until_error(struct libxenvchan *c)
{
    char buf[4096];
    long total = 0;
    c->blocking = 1;
    for (;;) {
        int n = libxenvchan_read(c, buf, sizeof buf);
        if (n <= 0) {
            int e = errno;
            say("read %d %s", n, errno_name(n < 0 ? e : 0));
            break;
        }
        total += n;
    }
    say("total %ld", total);
    errno = 0;
    int open = libxenvchan_is_open(c);
    say("is_open %d %s", open, errno_name(open ? 0 : errno));
    say("data_ready %d", libxenvchan_data_ready(c));
    say("buffer_space %d", libxenvchan_buffer_space(c));
}

/* vchan-socket-proxy's loop, without the socket: how does it end? */
static void select_loop(struct libxenvchan *c)
{
    char buf[4096];
    long total = 0;
    int fd = libxenvchan_fd_for_select(c);
    c->blocking = 0;
    for (;;) {
        fd_set rfds;
        FD_ZERO(&rfds);
        FD_SET(fd, &rfds);
        if (select(fd + 1, &rfds, NULL, NULL, NULL) < 0) {
            if (errno == EINTR)
                continue;
            die("select");
        }
        need(libxenvchan_wait(c) == 0, "wait");
        errno = 0;
        int open = libxenvchan_is_open(c);
        if (!open) {
            say("is_open 0 %s", errno_name(errno));
            break;
        }
        int ready;
        while ((ready = libxenvchan_data_ready(c)) > 0) {
            int n = libxenvchan_read(c, buf, ready < (int)sizeof buf ? (size_t)ready : sizeof buf);
            if (n < 0) {
                say("read %d %s", n, errno_name(errno));
                goto out;
            }
            total += n;
        }
    }
out:
    say("total %ld", total);
}

static void write_until_error(struct libxenvchan *c, size_t size)
{
    char *buf = calloc(1, size);
    if (!buf)
        die("calloc");
    c->blocking = 1;
    errno = 0;
    int n = libxenvchan_write(c, buf, size);
    say("write %d %s", n, errno_name(n < 0 ? errno : 0));
    errno = 0;
    n = libxenvchan_write(c, buf, 1);
    say("write-again %d %s", n, errno_name(n < 0 ? errno : 0));
    free(buf);
}

static void watch_open(struct libxenvchan *c)
{
    int fd = libxenvchan_fd_for_select(c);
    c->blocking = 0;
    for (;;) {
        errno = 0;
        int open = libxenvchan_is_open(c);
        if (open != 1) {
            say("is_open %d %s", open, errno_name(open ? 0 : errno));
            break;
        }
        fd_set rfds;
        FD_ZERO(&rfds);
        FD_SET(fd, &rfds);
        struct timeval tv = {0, 100 * 1000};
        int r = select(fd + 1, &rfds, NULL, NULL, &tv);
        if (r > 0)
            need(libxenvchan_wait(c) == 0, "wait");
    }
}

static void on_signal(int sig)
{
    (void)sig;
}

static void signal_write(struct libxenvchan *c, size_t size, int restart)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL))
        die("sigaction");
    char *buf = calloc(1, size);
    if (!buf)
        die("calloc");
    c->blocking = 1;
    say("armed");
    errno = 0;
    int n = libxenvchan_write(c, buf, size);
    say("write %d %s", n, errno_name(n < 0 ? errno : 0));
    free(buf);
}

/* A server with server_persist set, as the flag is written between calls: it stays open when
 * its first client leaves, serves the next on the same page, and ends once the flag is
 * cleared. Each line waits for the test to move the clients on. */
static void persist(struct libxenvchan *c)
{
    char buf[16];
    c->server_persist = 1;
    c->blocking = 1;
    need(libxenvchan_recv(c, buf, 3) == 3, "recv from the first client");
    say("first %.3s", buf);
    while (c->ring->cli_live != 0)
        need(libxenvchan_wait(c) == 0, "wait for the first client's close");
    say("is_open-persist %d", libxenvchan_is_open(c));
    c->blocking = 0;
    say("nonblocking-read-persist %d", libxenvchan_read(c, buf, sizeof buf));
    c->blocking = 1;
    need(libxenvchan_recv(c, buf, 3) == 3, "recv from the second client");
    say("second %.3s", buf);
    c->server_persist = 0;
    errno = 0;
    int n = libxenvchan_read(c, buf, sizeof buf);
    say("read-after-close %d %s", n, errno_name(n < 0 ? errno : 0));
    say("is_open-after-close %d", libxenvchan_is_open(c));
}

static void oversize(struct libxenvchan *c)
{
    size_t rd = ((size_t)1 << c->read.order) + 1, wr = ((size_t)1 << c->write.order) + 1;
    char *buf = calloc(1, rd > wr ? rd : wr);
    if (!buf)
        die("calloc");
    for (int blocking = 0; blocking <= 1; blocking++) {
        c->blocking = blocking;
        const char *mode = blocking ? "blocking" : "nonblocking";
        errno = 0;
        int n = libxenvchan_recv(c, buf, rd);
        say("%s-recv %d %s", mode, n, errno_name(n < 0 ? errno : 0));
        errno = 0;
        n = libxenvchan_send(c, buf, wr);
        say("%s-send %d %s", mode, n, errno_name(n < 0 ? errno : 0));
    }
    free(buf);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc == 2 && !strcmp(argv[1], "layout")) {
        layout();
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "init-errors")) {
        init_errors(atoi(argv[2]));
        return 0;
    }
    int server = argc >= 2 && !strcmp(argv[1], "server");
    int first = server ? 6 : 4; /* index of SCENARIO */
    if (argc <= first || (!server && strcmp(argv[1], "client"))) {
        fprintf(stderr, "usage: vchan-probe layout | init-errors DOMID |\n"
                        "       server DOMID PATH READ_MIN WRITE_MIN SCENARIO [ARG] |\n"
                        "       client DOMID PATH SCENARIO [ARG]\n");
        return 2;
    }
    int domid = atoi(argv[2]);
    const char *path = argv[3];
    const char *scenario = argv[first];
    const char *arg = argc > first + 1 ? argv[first + 1] : NULL;
    note_inherited();
    struct libxenvchan *c =
        server ? libxenvchan_server_init(NULL, domid, path, strtoul(argv[4], NULL, 0),
                                         strtoul(argv[5], NULL, 0))
               : libxenvchan_client_init(NULL, domid, path);
    if (!c) {
        say("init NULL %s", errno_name(errno));
        say("done");
        return 0;
    }
    if (!strcmp(scenario, "fields")) {
        print_fields(c);
        say("is_open %d", libxenvchan_is_open(c));
        conversation(c, server);
    } else if (!strcmp(scenario, "read-until-error")) {
        read_until_error(c);
    } else if (!strcmp(scenario, "select-loop")) {
        select_loop(c);
    } else if (!strcmp(scenario, "write-until-error") && arg) {
        write_until_error(c, strtoul(arg, NULL, 0));
    } else if (!strcmp(scenario, "watch-open")) {
        watch_open(c);
    } else if (!strcmp(scenario, "signal-write") && arg && argc > first + 2) {
        signal_write(c, strtoul(arg, NULL, 0), !strcmp(argv[first + 2], "restart"));
    } else if (!strcmp(scenario, "persist") && server) {
        persist(c);
    } else if (!strcmp(scenario, "oversize")) {
        oversize(c);
    } else {
        fprintf(stderr, "vchan-probe: unknown scenario %s\n", scenario);
        return 2;
    }
    libxenvchan_close(c);
    say("done");
    return 0;
}
