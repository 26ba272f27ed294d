/*
 * cbench: the load generator of twisted-serversock's benchmarks.
 *
 * Compiled at run time by bench/_harness.py with the system cc
 * ("cc -O2 -o cbench cbench.c").  A C client, because a Python client is
 * slower than the Python server it measures.  Every mode is bounded in time
 * and count, and only talks to the address it is given (the harness only
 * ever gives 127.0.0.1 or a UNIX socket path).
 *
 * ADDR is "tcp:HOST:PORT" (IPv4 literal) or "unix:PATH".
 *
 *   cbench conn  ADDR CONC SECONDS MAXCOUNT none|http [PAUSE_US]
 *       Keep CONC connections in flight: connect, optionally send a
 *       one-line HTTP request with "Connection: close", read to EOF, close.
 *       Stops starting new ones after SECONDS or MAXCOUNT, then drains.
 *       PAUSE_US: wait that long after each connection before the next
 *       (with CONC=1, so that the server is idle, blocked in epoll_wait,
 *       whenever a connection arrives: every connection then runs the
 *       same code path, which makes instruction counts repeatable).
 *   cbench echo  ADDR SECONDS MAXBYTES WINDOW
 *       One connection; 64 KiB writes with at most WINDOW bytes in flight;
 *       counts the bytes echoed back.
 *   cbench burst ADDR N TIMEOUT
 *       Start N non-blocking connects at once; per connection, the time to
 *       connect and the time until the server's EOF (it closes on accept).
 *   cbench hold  ADDR N SECONDS
 *       Open N idle connections, print "held=N", keep them until standard
 *       input closes or SECONDS pass, then close them.
 *   cbench reqs  ADDR N PATH
 *       One keep-alive connection, N sequential "GET PATH" requests, each
 *       response read in full (Content-Length).
 *
 * Output: one line of key=value pairs on standard output.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_storage g_addr;
static socklen_t g_addrlen;
static int g_family;

static const char HTTP_CLOSE[] =
    "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void parse_addr(const char *spec) {
    memset(&g_addr, 0, sizeof g_addr);
    if (strncmp(spec, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)&g_addr;
        un->sun_family = AF_UNIX;
        if (strlen(spec + 5) >= sizeof un->sun_path) {
            fprintf(stderr, "path too long\n");
            exit(2);
        }
        strcpy(un->sun_path, spec + 5);
        g_addrlen = sizeof *un;
        g_family = AF_UNIX;
    } else if (strncmp(spec, "tcp:", 4) == 0) {
        char host[64];
        const char *colon = strrchr(spec + 4, ':');
        if (!colon || (size_t)(colon - (spec + 4)) >= sizeof host) {
            fprintf(stderr, "bad address %s\n", spec);
            exit(2);
        }
        memcpy(host, spec + 4, colon - (spec + 4));
        host[colon - (spec + 4)] = 0;
        struct sockaddr_in *in = (struct sockaddr_in *)&g_addr;
        in->sin_family = AF_INET;
        in->sin_port = htons((unsigned short)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1) {
            fprintf(stderr, "not an IPv4 literal: %s\n", host);
            exit(2);
        }
        g_addrlen = sizeof *in;
        g_family = AF_INET;
    } else {
        fprintf(stderr, "ADDR must be tcp:HOST:PORT or unix:PATH\n");
        exit(2);
    }
}

/* The pending error of a socket whose non-blocking connect() finished. */
static int so_error(int fd) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno;
    return err;
}

/* Exit with the usage line unless the mode got its argument count; then
 * parse the address (always the first argument). */
static void mode_args(int argc, char **argv, int want, const char *usage) {
    if (argc != want) {
        fprintf(stderr, "usage: cbench %s\n", usage);
        exit(2);
    }
    parse_addr(argv[0]);
}

/* A non-blocking socket with connect() started; -1 on an immediate error. */
static int start_connect(void) {
    int fd = socket(g_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&g_addr, g_addrlen) < 0 && errno != EINPROGRESS &&
        errno != EAGAIN) {
        close(fd);
        return -1;
    }
    return fd;
}

/* ------------------------------------------------------------------ conn */

enum { ST_CONNECTING = 1, ST_READING = 2 };

struct slot {
    int fd;
    int state;
};

static int mode_conn(int argc, char **argv) {
    mode_args(argc, argv, argc == 6 ? 6 : 5, "conn ADDR CONC SECONDS MAXCOUNT none|http [PAUSE_US]");
    int conc = atoi(argv[1]);
    double seconds = atof(argv[2]);
    long maxcount = atol(argv[3]);
    int http = strcmp(argv[4], "http") == 0;
    long pause_us = argc == 6 ? atol(argv[5]) : 0;
    if (conc < 1 || conc > 4096)
        conc = 1;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct slot *slots = calloc(conc, sizeof *slots);
    long started = 0, completed = 0, errors = 0;
    int inflight = 0;
    double t0 = now(), c0 = cpu_seconds();
    double stop_at = t0 + seconds, drain_until = stop_at + 5.0;
    char buf[4096];

#define START(i)                                                                   \
    do {                                                                           \
        slots[i].fd = -1;                                                          \
        while (started < maxcount && now() < stop_at) {                            \
            started++;                                                             \
            int fd_ = start_connect();                                             \
            if (fd_ < 0) {                                                         \
                errors++;                                                          \
                continue;                                                          \
            }                                                                      \
            slots[i].fd = fd_;                                                     \
            slots[i].state = ST_CONNECTING;                                        \
            struct epoll_event ev_ = {.events = EPOLLOUT, .data.u32 = (unsigned)i}; \
            epoll_ctl(ep, EPOLL_CTL_ADD, fd_, &ev_);                               \
            inflight++;                                                            \
            break;                                                                 \
        }                                                                          \
    } while (0)

    for (int i = 0; i < conc; i++)
        START(i);
    struct epoll_event events[256];
    while (inflight > 0 && now() < drain_until) {
        int n = epoll_wait(ep, events, 256, 100);
        for (int k = 0; k < n; k++) {
            int i = (int)events[k].data.u32;
            struct slot *s = &slots[i];
            if (s->fd < 0)
                continue;
            int done = 0, failed = 0;
            if (s->state == ST_CONNECTING) {
                if (so_error(s->fd)) {
                    failed = 1;
                } else {
                    if (http)
                        (void)!write(s->fd, HTTP_CLOSE, sizeof HTTP_CLOSE - 1);
                    s->state = ST_READING;
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (unsigned)i};
                    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                }
            } else {
                for (;;) {
                    ssize_t r = read(s->fd, buf, sizeof buf);
                    if (r > 0)
                        continue;
                    if (r == 0)
                        done = 1;
                    else if (errno == EAGAIN)
                        break;
                    else if (errno == ECONNRESET && !http)
                        done = 1; /* the server closed at once: also served */
                    else
                        failed = 1;
                    break;
                }
            }
            if (done || failed) {
                if (done)
                    completed++;
                else
                    errors++;
                close(s->fd); /* also removes it from the epoll set */
                inflight--;
                if (pause_us > 0)
                    usleep((useconds_t)pause_us);
                START(i);
            }
        }
    }
    double elapsed = now() - t0;
    errors += inflight; /* still open at the drain deadline */
    printf("completed=%ld errors=%ld elapsed=%.6f rate=%.1f cpu=%.6f\n", completed, errors,
           elapsed, completed / elapsed, cpu_seconds() - c0);
    return 0;
}

/* ------------------------------------------------------------------ echo */

static int mode_echo(int argc, char **argv) {
    mode_args(argc, argv, 4, "echo ADDR SECONDS MAXBYTES WINDOW");
    double seconds = atof(argv[1]);
    long long maxbytes = atoll(argv[2]);
    long long window = atoll(argv[3]);
    int fd = socket(g_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&g_addr, g_addrlen) < 0)
        die("connect");
    if (g_family == AF_INET) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    static char out[65536], in[262144];
    memset(out, 'x', sizeof out);
    long long sent = 0, received = 0;
    double t0 = now(), stop_at = t0 + seconds;
    struct pollfd p = {.fd = fd};
    while (received < maxbytes) {
        double t = now();
        if (t >= stop_at)
            break;
        int want_write = sent < maxbytes && sent - received + (long long)sizeof out <= window;
        p.events = POLLIN | (want_write ? POLLOUT : 0);
        if (poll(&p, 1, 100) < 0)
            die("poll");
        if (p.revents & POLLIN) {
            ssize_t r = read(fd, in, sizeof in);
            if (r == 0)
                break;
            if (r < 0 && errno != EAGAIN)
                die("read");
            if (r > 0)
                received += r;
        }
        if (want_write && (p.revents & POLLOUT)) {
            ssize_t w = write(fd, out, sizeof out);
            if (w < 0 && errno != EAGAIN)
                die("write");
            if (w > 0)
                sent += w;
        }
    }
    double elapsed = now() - t0;
    close(fd);
    printf("bytes=%lld elapsed=%.6f mbps=%.1f\n", received, elapsed, received / elapsed / 1e6);
    return 0;
}

/* ----------------------------------------------------------------- burst */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double q) {
    if (n == 0)
        return -1;
    int i = (int)(q * (n - 1) + 0.5);
    return v[i];
}

static int mode_burst(int argc, char **argv) {
    mode_args(argc, argv, 3, "burst ADDR N TIMEOUT");
    int n = atoi(argv[1]);
    double timeout = atof(argv[2]);
    if (n < 1 || n > 16000)
        n = 1;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int *fds = calloc(n, sizeof *fds);
    int *state = calloc(n, sizeof *state);
    double *t_start = calloc(n, sizeof(double));
    double *t_conn = calloc(n, sizeof(double));
    double *t_served = calloc(n, sizeof(double));
    int failed = 0, pending = 0;
    double t0 = now();
    for (int i = 0; i < n; i++) {
        t_start[i] = now();
        fds[i] = start_connect();
        if (fds[i] < 0) {
            failed++;
            continue;
        }
        state[i] = ST_CONNECTING;
        struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (unsigned)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
        pending++;
    }
    double issued = now() - t0;
    double deadline = t0 + timeout;
    struct epoll_event events[512];
    char buf[256];
    while (pending > 0 && now() < deadline) {
        int k = epoll_wait(ep, events, 512, 50);
        double t = now();
        for (int j = 0; j < k; j++) {
            int i = (int)events[j].data.u32;
            if (fds[i] < 0)
                continue;
            if (state[i] == ST_CONNECTING) {
                if (so_error(fds[i])) {
                    failed++;
                    close(fds[i]);
                    fds[i] = -1;
                    pending--;
                    continue;
                }
                t_conn[i] = t - t_start[i];
                state[i] = ST_READING;
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (unsigned)i};
                epoll_ctl(ep, EPOLL_CTL_MOD, fds[i], &ev);
            }
            ssize_t r = read(fds[i], buf, sizeof buf);
            if (r == 0 || (r < 0 && errno == ECONNRESET)) {
                t_served[i] = t - t_start[i];
                close(fds[i]);
                fds[i] = -1;
                pending--;
            } else if (r < 0 && errno != EAGAIN) {
                failed++;
                close(fds[i]);
                fds[i] = -1;
                pending--;
            }
        }
    }
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    failed += pending;
    /* Statistics over the connections that were served. */
    double *c = calloc(n, sizeof(double)), *s = calloc(n, sizeof(double));
    int m = 0;
    for (int i = 0; i < n; i++)
        if (t_served[i] > 0) {
            c[m] = t_conn[i];
            s[m] = t_served[i];
            m++;
        }
    qsort(c, m, sizeof(double), cmp_double);
    qsort(s, m, sizeof(double), cmp_double);
    printf("clients=%d completed=%d failed=%d issue_ms=%.3f "
           "connect_p50_ms=%.3f connect_p99_ms=%.3f connect_max_ms=%.3f "
           "served_p50_ms=%.3f served_p99_ms=%.3f served_max_ms=%.3f elapsed=%.6f\n",
           n, m, failed, issued * 1e3, pct(c, m, 0.5) * 1e3, pct(c, m, 0.99) * 1e3,
           m ? c[m - 1] * 1e3 : -1.0, pct(s, m, 0.5) * 1e3, pct(s, m, 0.99) * 1e3,
           m ? s[m - 1] * 1e3 : -1.0, now() - t0);
    return 0;
}

/* ------------------------------------------------------------------ hold */

static int mode_hold(int argc, char **argv) {
    mode_args(argc, argv, 3, "hold ADDR N SECONDS");
    int n = atoi(argv[1]);
    double seconds = atof(argv[2]);
    if (n < 1 || n > 16000)
        n = 1;
    int *fds = calloc(n, sizeof *fds);
    int held = 0, failed = 0;
    double deadline = now() + seconds;
    /* In batches of 32, below any backlog in play (Twisted's default is 50):
     * an overflowing listen queue with SYN cookies can leave a connection
     * that the client thinks is open and the server never saw. */
    for (int base = 0; base < n && now() < deadline; base += 32) {
        int end = base + 32 < n ? base + 32 : n;
        struct pollfd p[32];
        for (int i = base; i < end; i++) {
            fds[i] = start_connect();
            p[i - base].fd = fds[i];
            p[i - base].events = POLLOUT;
        }
        int left = end - base;
        while (left > 0 && now() < deadline) {
            if (poll(p, end - base, 100) < 0)
                die("poll");
            for (int i = 0; i < end - base; i++) {
                if (p[i].fd >= 0 && p[i].revents) {
                    if (so_error(p[i].fd))
                        failed++;
                    else
                        held++;
                    p[i].fd = -1;
                    left--;
                }
            }
        }
        for (int i = 0; i < end - base; i++)
            if (p[i].fd >= 0)
                failed++;
    }
    printf("held=%d failed=%d\n", held, failed);
    fflush(stdout);
    struct pollfd in = {.fd = 0, .events = POLLIN};
    while (now() < deadline) {
        int r = poll(&in, 1, 100);
        if (r > 0) {
            char c;
            if (read(0, &c, 1) <= 0)
                break;
        }
    }
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return 0;
}

/* ------------------------------------------------------------------ reqs */

static int mode_reqs(int argc, char **argv) {
    mode_args(argc, argv, 3, "reqs ADDR N PATH");
    long n = atol(argv[1]);
    char req[512];
    int reqlen = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", argv[2]);
    int fd = socket(g_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&g_addr, g_addrlen) < 0)
        die("connect");
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    static char buf[65536];
    long done = 0;
    size_t have = 0;
    double t0 = now();
    for (; done < n; done++) {
        if (write(fd, req, reqlen) != reqlen)
            break;
        /* Headers. */
        char *end;
        for (;;) {
            buf[have] = 0;
            end = strstr(buf, "\r\n\r\n");
            if (end)
                break;
            ssize_t r = read(fd, buf + have, sizeof buf - 1 - have);
            if (r <= 0)
                goto out;
            have += r;
        }
        size_t hlen = end + 4 - buf;
        long clen = 0;
        char *cl = strcasestr(buf, "\r\ncontent-length:");
        if (cl && cl < end)
            clen = atol(cl + 17);
        while (have < hlen + clen) {
            ssize_t r = read(fd, buf + have, sizeof buf - 1 - have);
            if (r <= 0)
                goto out;
            have += r;
        }
        memmove(buf, buf + hlen + clen, have - hlen - clen);
        have -= hlen + clen;
    }
out:
    close(fd);
    printf("completed=%ld elapsed=%.6f\n", done, now() - t0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: cbench conn|echo|burst|hold|reqs ...\n");
        return 2;
    }
    if (strcmp(argv[1], "conn") == 0)
        return mode_conn(argc - 2, argv + 2);
    if (strcmp(argv[1], "echo") == 0)
        return mode_echo(argc - 2, argv + 2);
    if (strcmp(argv[1], "burst") == 0)
        return mode_burst(argc - 2, argv + 2);
    if (strcmp(argv[1], "hold") == 0)
        return mode_hold(argc - 2, argv + 2);
    if (strcmp(argv[1], "reqs") == 0)
        return mode_reqs(argc - 2, argv + 2);
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
