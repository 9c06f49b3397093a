/*
 * mcload: a small, fast memcached text-protocol load generator for ops/bench.
 *
 * One thread, epoll, N connections, each keeping up to D requests in flight (D=1: no
 * pipelining).  Every request is "get <key>" or "set <key> 0 0 <size>" on a fixed key set;
 * replies are parsed as a stream (values are skipped, never buffered), latencies go into a
 * 1-microsecond histogram so p50/p99 are exact.  Prints one JSON line.
 *
 * Why not memaslap: it cannot pipeline, reports latency only in power-of-two buckets, and
 * insists on at least 1024 keys per connection, which at 1 MiB values is 50 GB.
 *
 * Build: cc -O2 -o mcload mcload.c   (with TLS: cc -O2 -DMCLOAD_TLS -o mcload mcload.c -lssl -lcrypto)
 * Usage: mcload -h 127.0.0.1 -p 11211 -c 50 -d 1 -t 5 -s 100 -k 1000 -o get [-W]
 *               [-a user:password] [-T ca.pem]
 *   -W  first store every key once (so gets hit)
 *   -a  log every connection in first (memcached -Y: a set whose value is "user password")
 *   -T  speak TLS, trusting this CA (the server's name is not checked: loopback benchmark)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifdef MCLOAD_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

#define HIST_MAX 2000000 /* 2 s at 1 us resolution; slower goes to the last bucket */
#define RBUF 65536

typedef struct {
    int fd;
    void *ssl;          /* SSL * when -T */
    int inflight;
    uint64_t *sent_at; /* ring of send times, size depth */
    int head, tail;
    char *out; size_t out_len, out_off, out_cap;
    char in[RBUF]; size_t in_len;
    long long skip;     /* value bytes (+CRLF) still to skip */
    int in_value;       /* inside a get reply, waiting for END */
    unsigned long next_key;
} conn_t;

static const char *host = "127.0.0.1";
static int port = 11211, nconns = 50, depth = 1, seconds = 5, warm = 0;
static long size = 100, nkeys = 1000;
static int is_get = 1;
static char *value;
static uint32_t *hist;
static unsigned long long done_ops, misses, errors;
static int measuring;
static const char *login;   /* "user password", -a */
static const char *tls_ca;  /* -T */
#ifdef MCLOAD_TLS
static SSL_CTX *tls_ctx;
#endif

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + ts.tv_nsec / 1000;
}

static void die(const char *what) { perror(what); exit(2); }

/* read/write through TLS when the connection has it; -1 with errno EAGAIN when it would
 * block (TLS: in either direction; the edge-triggered loop retries on any event). */
static ssize_t conn_read(conn_t *c, void *buf, size_t n) {
#ifdef MCLOAD_TLS
    if (c->ssl) {
        int r = SSL_read(c->ssl, buf, (int)n);
        if (r > 0) return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) { errno = EAGAIN; return -1; }
        if (e == SSL_ERROR_ZERO_RETURN) return 0;
        ERR_print_errors_fp(stderr);
        errno = EIO;
        return -1;
    }
#endif
    return read(c->fd, buf, n);
}

static ssize_t conn_write(conn_t *c, const void *buf, size_t n) {
#ifdef MCLOAD_TLS
    if (c->ssl) {
        int r = SSL_write(c->ssl, buf, (int)n);
        if (r > 0) return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) { errno = EAGAIN; return -1; }
        ERR_print_errors_fp(stderr);
        errno = EIO;
        return -1;
    }
#endif
    return write(c->fd, buf, n);
}

/* Blocking: TLS handshake and login, before the connection goes non-blocking. */
static void secure(conn_t *c) {
    if (tls_ca) {
#ifdef MCLOAD_TLS
        SSL *ssl = SSL_new(tls_ctx);
        SSL_set_fd(ssl, c->fd);
        if (SSL_connect(ssl) != 1) { ERR_print_errors_fp(stderr); exit(2); }
        c->ssl = ssl;
#else
        fprintf(stderr, "built without TLS (-DMCLOAD_TLS)\n");
        exit(2);
#endif
    }
    if (login) {
        char line[600];
        int n = snprintf(line, sizeof line, "set auth 0 0 %zu\r\n%s\r\n", strlen(login), login);
        if (conn_write(c, line, n) != n) die("login write");
        char reply[64];
        size_t got = 0;
        while (got < 8) {
            ssize_t r = conn_read(c, reply + got, sizeof reply - got);
            if (r <= 0) die("login read");
            got += r;
        }
        if (got != 8 || memcmp(reply, "STORED\r\n", 8) != 0) {
            fprintf(stderr, "login refused: %.*s", (int)got, reply);
            exit(2);
        }
    }
}

static int connect_one(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void out_append(conn_t *c, const char *p, size_t n) {
    if (c->out_len + n > c->out_cap) {
        while (c->out_len + n > c->out_cap) c->out_cap = c->out_cap ? c->out_cap * 2 : 65536;
        c->out = realloc(c->out, c->out_cap);
        if (!c->out) die("realloc");
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

static void queue_request(conn_t *c, int get, unsigned long key) {
    char line[128];
    int n;
    if (get) {
        n = snprintf(line, sizeof line, "get key:%08lu\r\n", key);
        out_append(c, line, n);
    } else {
        n = snprintf(line, sizeof line, "set key:%08lu 0 0 %ld\r\n", key, size);
        out_append(c, line, n);
        out_append(c, value, size);
        out_append(c, "\r\n", 2);
    }
    c->sent_at[c->tail] = now_us();
    c->tail = (c->tail + 1) % depth;
    c->inflight++;
}

static int flush_out(conn_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = conn_write(c, c->out + c->out_off, c->out_len - c->out_off);
        if (w < 0) {
            if (errno == EAGAIN) return 0;
            die("write");
        }
        c->out_off += w;
    }
    c->out_off = c->out_len = 0;
    return 1;
}

static void complete(conn_t *c) {
    uint64_t lat = now_us() - c->sent_at[c->head];
    c->head = (c->head + 1) % depth;
    c->inflight--;
    if (measuring) {
        hist[lat < HIST_MAX ? lat : HIST_MAX - 1]++;
        done_ops++;
    }
}

/* Consume replies in c->in; returns number of completed requests. */
static int parse(conn_t *c) {
    int completed = 0;
    size_t pos = 0;
    for (;;) {
        if (c->skip > 0) {
            size_t avail = c->in_len - pos;
            size_t n = (size_t)c->skip < avail ? (size_t)c->skip : avail;
            pos += n;
            c->skip -= n;
            if (c->skip > 0) break;
            continue;
        }
        char *start = c->in + pos;
        char *nl = memchr(start, '\n', c->in_len - pos);
        if (!nl) break;
        size_t len = nl - start + 1;
        if (len >= 5 && memcmp(start, "VALUE", 5) == 0) {
            /* VALUE <key> <flags> <bytes> [cas] */
            char *p = start + 6, *end = nl;
            long fields[3] = {0, 0, 0};
            int f = 0;
            while (p < end && *p != ' ') p++; /* key */
            while (p < end && f < 3) {
                while (p < end && *p == ' ') p++;
                if (p >= end || *p == '\r') break;
                fields[f++] = strtol(p, &p, 10);
            }
            c->skip = fields[1] + 2;
            c->in_value = 1;
        } else if (len >= 3 && memcmp(start, "END", 3) == 0) {
            if (!c->in_value) misses++;
            c->in_value = 0;
            complete(c);
            completed++;
        } else if (len >= 6 && memcmp(start, "STORED", 6) == 0) {
            complete(c);
            completed++;
        } else {
            errors++;
            fprintf(stderr, "unexpected reply: %.*s", (int)len, start);
            complete(c);
            completed++;
        }
        pos += len;
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
    if (c->in_len == RBUF) { fprintf(stderr, "reply line too long\n"); exit(2); }
    return completed;
}

static void fill(conn_t *c, int get) {
    while (c->inflight < depth) {
        queue_request(c, get, c->next_key);
        c->next_key = (c->next_key + nconns) % nkeys;
    }
}

static void warmup(void) {
    /* One pipelined connection stores every key. */
    conn_t c = {0};
    int saved_depth = depth;
    depth = 64;
    c.fd = connect_one(); /* blocking is fine here */
    secure(&c);
    c.sent_at = calloc(depth, sizeof(uint64_t));
    unsigned long key = 0, acked = 0;
    while (acked < (unsigned long)nkeys) {
        while (c.inflight < depth && key < (unsigned long)nkeys) queue_request(&c, 0, key++);
        while (c.out_off < c.out_len) {
            ssize_t w = conn_write(&c, c.out + c.out_off, c.out_len - c.out_off);
            if (w <= 0) die("write");
            c.out_off += w;
        }
        c.out_off = c.out_len = 0;
        ssize_t r = conn_read(&c, c.in + c.in_len, RBUF - c.in_len);
        if (r <= 0) die("read");
        c.in_len += r;
        acked += parse(&c);
    }
    close(c.fd);
    free(c.sent_at);
    free(c.out);
    depth = saved_depth;
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "h:p:c:d:t:s:k:o:Wa:T:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': nconns = atoi(optarg); break;
        case 'd': depth = atoi(optarg); break;
        case 't': seconds = atoi(optarg); break;
        case 's': size = atol(optarg); break;
        case 'k': nkeys = atol(optarg); break;
        case 'o': is_get = strcmp(optarg, "get") == 0; break;
        case 'W': warm = 1; break;
        case 'a': {
            /* user:password -> "user password" */
            char *v = strdup(optarg), *colon = strchr(v, ':');
            if (!colon) { fprintf(stderr, "-a wants user:password\n"); return 2; }
            *colon = ' ';
            login = v;
            break;
        }
        case 'T': tls_ca = optarg; break;
        default: fprintf(stderr, "bad option\n"); return 2;
        }
    }
#ifdef MCLOAD_TLS
    if (tls_ca) {
        tls_ctx = SSL_CTX_new(TLS_client_method());
        if (!tls_ctx || SSL_CTX_load_verify_locations(tls_ctx, tls_ca, NULL) != 1) {
            ERR_print_errors_fp(stderr);
            return 2;
        }
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                                  | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
#endif
    value = malloc(size + 1);
    for (long i = 0; i < size; i++) value[i] = 'a' + i % 26;
    hist = calloc(HIST_MAX, sizeof(uint32_t));
    if (warm) warmup();

    int ep = epoll_create1(0);
    conn_t *conns = calloc(nconns, sizeof(conn_t));
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        c->fd = connect_one();
        secure(c);
        fcntl(c->fd, F_SETFL, O_NONBLOCK);
        c->sent_at = calloc(depth, sizeof(uint64_t));
        c->next_key = i % nkeys;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    /* 10% of the time (at least 0.5 s) warms the pipes up before measuring. */
    uint64_t t0 = now_us();
    uint64_t settle = seconds * 100000u > 500000u ? seconds * 100000u : 500000u;
    uint64_t start = t0 + settle, stop = start + (uint64_t)seconds * 1000000u;
    for (int i = 0; i < nconns; i++) { fill(&conns[i], is_get); flush_out(&conns[i]); }
    struct epoll_event evs[256];
    uint64_t measured_start = 0;
    for (;;) {
        uint64_t t = now_us();
        if (!measuring && t >= start) { measuring = 1; measured_start = t; }
        if (t >= stop) break;
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (evs[i].events & EPOLLIN) {
                for (;;) {
                    ssize_t r = conn_read(c, c->in + c->in_len, RBUF - c->in_len);
                    if (r < 0) { if (errno == EAGAIN) break; die("read"); }
                    if (r == 0) { fprintf(stderr, "server closed a connection\n"); exit(2); }
                    c->in_len += r;
                    parse(c);
                }
            }
            fill(c, is_get);
            flush_out(c);
        }
    }
    double elapsed = (now_us() - measured_start) / 1e6;
    unsigned long long total = 0, p50 = 0, p99 = 0, p999 = 0;
    for (int i = 0; i < HIST_MAX; i++) total += hist[i];
    unsigned long long acc = 0;
    for (int i = 0; i < HIST_MAX; i++) {
        acc += hist[i];
        if (!p50 && acc * 100 >= total * 50) p50 = i;
        if (!p99 && acc * 100 >= total * 99) p99 = i;
        if (!p999 && acc * 1000 >= total * 999) { p999 = i; break; }
    }
    printf("{\"op\": \"%s\", \"size\": %ld, \"conns\": %d, \"depth\": %d, \"keys\": %ld, "
           "\"ops\": %llu, \"seconds\": %.3f, \"ops_per_sec\": %.1f, \"p50_us\": %llu, "
           "\"p99_us\": %llu, \"p999_us\": %llu, \"misses\": %llu, \"errors\": %llu}\n",
           is_get ? "get" : "set", size, nconns, depth, nkeys, done_ops, elapsed,
           done_ops / elapsed, p50, p99, p999, misses, errors);
    return errors ? 1 : 0;
}
