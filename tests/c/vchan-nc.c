/*
 * vchan-nc: a netcat over Debian's unmodified libxenvchan, the C peer of the xensim interop tests.
 *
 *   vchan-nc [-N] -l DOMID PATH READ_MIN WRITE_MIN   serve client domain DOMID at PATH
 *   vchan-nc [-N] DOMID PATH                         connect to server domain DOMID at PATH
 *
 * Copies stdin to the peer and the peer to stdout, non-blocking, driven by select() on stdin and
 * libxenvchan_fd_for_select(). The server waits for its client before anything else. Exits 0 once
 * the peer has closed and everything it sent is on stdout; with -N, closes the channel as soon as
 * stdin is at EOF and everything read from it has been written to the ring.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include <libxenvchan.h>

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("vchan-nc: write stdout");
            exit(1);
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void drain(struct libxenvchan *ctrl, char *buf, size_t size)
{
    for (;;) {
        int n = libxenvchan_read(ctrl, buf, size);
        if (n < 0 && !libxenvchan_is_open(ctrl))
            return; /* libxenvchan reports "closed and empty" as -1 */
        if (n < 0) {
            perror("vchan-nc: libxenvchan_read");
            exit(1);
        }
        if (n == 0)
            return;
        write_all(1, buf, (size_t)n);
    }
}

int main(int argc, char **argv)
{
    int server = 0, close_on_eof = 0, argi = 1;
    while (argi < argc && argv[argi][0] == '-') {
        if (!strcmp(argv[argi], "-l"))
            server = 1;
        else if (!strcmp(argv[argi], "-N"))
            close_on_eof = 1;
        else
            break;
        argi++;
    }
    if (argc - argi != (server ? 4 : 2)) {
        fprintf(stderr, "usage: vchan-nc [-N] -l DOMID PATH READ_MIN WRITE_MIN | vchan-nc [-N] DOMID PATH\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int domid = atoi(argv[argi]);
    const char *path = argv[argi + 1];
    struct libxenvchan *ctrl;
    if (server)
        ctrl = libxenvchan_server_init(NULL, domid, path, strtoul(argv[argi + 2], NULL, 0),
                                       strtoul(argv[argi + 3], NULL, 0));
    else
        ctrl = libxenvchan_client_init(NULL, domid, path);
    if (!ctrl) {
        perror(server ? "vchan-nc: libxenvchan_server_init" : "vchan-nc: libxenvchan_client_init");
        return 1;
    }
    ctrl->blocking = 0;
    if (server) {
        while (libxenvchan_is_open(ctrl) == 2) {
            if (libxenvchan_wait(ctrl) < 0) {
                perror("vchan-nc: libxenvchan_wait");
                return 1;
            }
        }
    }
    static char in[65536], out[65536];
    size_t in_len = 0, in_off = 0;
    int in_open = 1;
    int vfd = libxenvchan_fd_for_select(ctrl);
    for (;;) {
        drain(ctrl, out, sizeof out);
        while (in_off < in_len) {
            int n = libxenvchan_write(ctrl, in + in_off, in_len - in_off);
            if (n < 0) {
                fprintf(stderr, "vchan-nc: the peer has closed the channel\n");
                return 1;
            }
            if (n == 0)
                break;
            in_off += (size_t)n;
        }
        if (in_off == in_len)
            in_len = in_off = 0;
        if (!libxenvchan_is_open(ctrl)) {
            drain(ctrl, out, sizeof out);
            break;
        }
        if (!in_open && in_len == 0 && close_on_eof)
            break;
        fd_set rfds;
        FD_ZERO(&rfds);
        FD_SET(vfd, &rfds);
        if (in_open && in_len == 0)
            FD_SET(0, &rfds);
        if (select(vfd + 1, &rfds, NULL, NULL, NULL) < 0) {
            if (errno == EINTR)
                continue;
            perror("vchan-nc: select");
            return 1;
        }
        if (FD_ISSET(vfd, &rfds) && libxenvchan_wait(ctrl) < 0) {
            perror("vchan-nc: libxenvchan_wait");
            return 1;
        }
        if (FD_ISSET(0, &rfds)) {
            ssize_t n = read(0, in, sizeof in);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                in_open = 0;
            else
                in_len = (size_t)n;
        }
    }
    libxenvchan_close(ctrl);
    return 0;
}
