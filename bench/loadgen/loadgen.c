/*
 * loadgen - a small HTTP/1.1-over-TLS load generator with client certificates.
 *
 * Exists because wrk, h2load and hey cannot present a client certificate,
 * ab speaks HTTP/1.0 and autocannon's reconnect mode loses responses, while
 * tokensmith authenticates clients with mutual TLS.
 *
 * Design: one thread, one epoll loop, N non-blocking connections, each a small
 * state machine (connect -> TLS handshake -> write request -> read response).
 * Being single-threaded keeps its own CPU use easy to measure: it is reported
 * (getrusage) so a run can show that the generator was not the bottleneck.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define MAX_HEAD (64 * 1024)     /* largest response header block accepted */
#define MAX_LINE 8192            /* largest chunk-size or trailer line */
#define BUF_INIT (16 * 1024)     /* one TLS record fits */
#define BACKOFF_NS 50000000ULL   /* wait 50 ms after connect/TLS errors: no hot spin */
#define SCAN_NS 10000000ULL      /* timeout scan granularity: 10 ms */
#define NS 1000000000ULL

enum err_kind { E_CONNECT, E_TLS, E_STATUS, E_TIMEOUT, E_PROTOCOL, E_CLOSED, E_KINDS };
static const char *err_names[E_KINDS] = {"connect", "tls", "status", "timeout", "protocol", "closed"};

enum cstate { S_FREE, S_BACKOFF, S_CONNECTING, S_HANDSHAKE, S_WRITING, S_READING, S_IDLE };
enum pstate { P_HEAD, P_BODY_CL, P_BODY_EOF, P_CHUNK_SIZE, P_CHUNK_DATA, P_CHUNK_CRLF, P_TRAILER };
enum io { IO_WAIT, IO_EOF, IO_RESET, IO_TLS };

struct conn {
    int fd, ctx;           /* ctx: index into G.ctx, i.e. which client certificate */
    SSL *ssl;
    enum cstate state;
    uint32_t events;       /* epoll interest currently registered */
    int tls_up;            /* handshake done, no fatal error: SSL_shutdown allowed */
    int in_req, measured;  /* attempt in flight; started inside the measured window */
    uint64_t t_conn, t_req, deadline, retry_at;
    size_t woff;           /* bytes of G.req[ctx] already written */
    char *buf;             /* response bytes not yet consumed by the parser */
    size_t cap, len, pos;
    enum pstate ps;
    int status, close_after;
    uint64_t remaining;    /* body or chunk bytes still expected */
};

struct vec { uint64_t *v; size_t n, cap; };

static struct { /* command-line options */
    const char *url, *method, *body_file, *cert, *key, *cert_list, *cacert, *client_id;
    char *body, *headers;  /* headers: the -H values, each ending in CRLF */
    size_t body_len, headers_len;
    int user_host, user_conn, conns, insecure, new_conn, tls_ver, expect, json;
    double duration, warmup, timeout;
    long long total;
} O = {.method = "POST", .conns = 32, .timeout = 10.0};

static struct { /* everything else: target, TLS contexts, connections, counters */
    char host[256], port[24], *path;
    char **req;            /* the request bytes, one per TLS context (the body may differ) */
    size_t *reqlen;
    int is_ip, is_head, ep, nctx, next_ctx;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    SSL_CTX **ctx;
    char **certs;          /* parallel to ctx, for messages; NULL without client certificate */
    char **ids;            /* parallel to ctx: the client_id for {client_id}, or NULL */
    struct conn *c;
    volatile sig_atomic_t interrupted;
    int running, measuring, ever_ok, early_fails;
    uint64_t t_measure_at, t_mstart, t_stop_at, t_end;
    long long attempts, inflight, requests, handshakes, reconnects;
    long long errors[E_KINDS];
    struct vec lat, hs;
    struct rusage ru0, ru1;
    char tls_version[16];
} G;

static void start_conn(struct conn *c);
static void do_handshake(struct conn *c);
static void do_write(struct conn *c);

/* ---------- small helpers ---------- */

__attribute__((format(printf, 2, 3), noreturn)) static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p)
        die(1, "out of memory");
    return p;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static void vec_push(struct vec *v, uint64_t x) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 65536;
        v->v = xrealloc(v->v, v->cap * sizeof *v->v);
    }
    v->v[v->n++] = x;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void vec_sort(struct vec *v) {
    if (v->n) /* qsort(NULL, 0, ...) is undefined */
        qsort(v->v, v->n, sizeof *v->v, cmp_u64);
}

/* Nearest-rank percentile in ms of a sorted vector; NAN when empty. */
static double pct_ms(const struct vec *v, double p) {
    if (!v->n)
        return NAN;
    size_t i = (size_t)ceil(p / 100.0 * (double)v->n);
    return (double)v->v[i ? (i > v->n ? v->n : i) - 1 : 0] / 1e6;
}

/* Last OpenSSL error as text; clears the queue so later SSL_get_error is reliable. */
static const char *ssl_reason(SSL *ssl) {
    static char buf[256];
    unsigned long e = ERR_peek_last_error();
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (vr != X509_V_OK)
        snprintf(buf, sizeof buf, "certificate verify failed: %s", X509_verify_cert_error_string(vr));
    else if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    else
        snprintf(buf, sizeof buf, "%s", errno ? strerror(errno) : "connection closed by peer");
    ERR_clear_error();
    return buf;
}

static double parse_num(const char *s, const char *what, double min) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= min))
        die(2, "invalid value for %s: '%s'", what, s);
    return v;
}

/* ---------- connection bookkeeping ---------- */

static void set_events(struct conn *c, uint32_t ev) {
    if (c->events == ev)
        return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(G.ep, EPOLL_CTL_MOD, c->fd, &e) < 0)
        die(1, "epoll_ctl: %s", strerror(errno));
    c->events = ev;
}

static int can_start(void) {
    return G.running && !(O.total && G.measuring && G.attempts >= O.total);
}

/* An attempt is one request; only attempts that start after warmup are measured. */
static void begin_attempt(struct conn *c, uint64_t t) {
    c->in_req = 1;
    c->measured = G.measuring;
    c->t_req = t;
    c->deadline = t + (uint64_t)(O.timeout * NS);
    if (c->measured)
        G.attempts++, G.inflight++;
}

static void end_attempt(struct conn *c) {
    if (c->in_req && c->measured)
        G.inflight--;
    c->in_req = c->measured = 0;
}

static void close_conn(struct conn *c) {
    if (c->ssl) {
        if (c->tls_up) /* polite close_notify; non-blocking, result irrelevant */
            SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        ERR_clear_error();
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
    c->events = 0;
    c->tls_up = 0;
    c->state = S_FREE;
}

/* Keep-alive mode: the server or an error ended a connection, open another. */
static void reopen(struct conn *c) {
    if (!can_start())
        return;
    if (G.measuring && !O.new_conn)
        G.reconnects++;
    start_conn(c);
}

static void fail(struct conn *c, enum err_kind kind, const char *why) {
    /* As many connect/TLS failures as connections and not one response yet:
     * we cannot talk to the server at all, so stop with a readable reason. */
    if (!G.ever_ok && (kind == E_CONNECT || kind == E_TLS || kind == E_CLOSED) &&
        ++G.early_fails >= O.conns) {
        const char *cert = G.certs[c->ctx];
        die(1, "cannot connect to %s: %s%s%s%s%s", O.url, kind == E_TLS ? "TLS: " : "", why,
            kind == E_CLOSED ? " (client certificate missing or rejected?)" : "",
            cert ? " using client cert " : "", cert ? cert : "");
    }
    if (G.measuring)
        G.errors[kind]++;
    end_attempt(c);
    close_conn(c);
    if (kind == E_CONNECT || kind == E_TLS) {
        c->state = S_BACKOFF;
        c->retry_at = now_ns() + BACKOFF_NS;
    } else {
        reopen(c);
    }
}

/* Classify a failed SSL_* call. WANT_READ/WANT_WRITE only change what we wait for. */
static enum io ssl_io(struct conn *c, int r) {
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        set_events(c, e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT);
        return IO_WAIT;
    }
    c->tls_up = 0; /* SSL_shutdown must not follow a fatal error */
    if (e == SSL_ERROR_ZERO_RETURN)
        return IO_EOF;
    if (e == SSL_ERROR_SYSCALL) /* callers zero errno first, so 0 means plain EOF */
        return errno ? IO_RESET : IO_EOF;
    return IO_TLS;
}

/* ---------- connection state machine ---------- */

static void start_conn(struct conn *c) {
    uint64_t t = now_ns();
    c->state = S_CONNECTING;
    c->t_conn = t;
    c->deadline = t + (uint64_t)(O.timeout * NS);
    c->ctx = G.next_ctx++ % G.nctx; /* round-robin over client certificates */
    if (O.new_conn) /* latency includes connect + handshake */
        begin_attempt(c, t);

    c->fd = socket(G.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fail(c, E_CONNECT, strerror(errno));
        return;
    }
    int one = 1; /* the request is written in one go; don't let Nagle delay it */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(G.ep, EPOLL_CTL_ADD, c->fd, &e) < 0)
        die(1, "epoll_ctl: %s", strerror(errno));
    c->events = EPOLLOUT;
    if (connect(c->fd, (struct sockaddr *)&G.addr, G.addrlen) == 0)
        do_handshake(c);
    else if (errno != EINPROGRESS)
        fail(c, E_CONNECT, strerror(errno));
}

static void finish_connect(struct conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err)
        fail(c, E_CONNECT, strerror(err));
    else
        do_handshake(c);
}

/* Keep-alive: send the next request on this connection, or park it. */
static void next_request(struct conn *c) {
    if (!can_start()) {
        c->state = S_IDLE;
        set_events(c, 0); /* still reports HUP/ERR, which simply closes it */
        return;
    }
    begin_attempt(c, now_ns());
    do_write(c);
}

static void do_handshake(struct conn *c) {
    if (!c->ssl) {
        c->state = S_HANDSHAKE;
        c->ssl = SSL_new(G.ctx[c->ctx]);
        if (!c->ssl)
            die(1, "SSL_new: %s", ssl_reason(NULL));
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_connect_state(c->ssl);
        if (!G.is_ip) /* SNI must not carry IP literals (RFC 6066) */
            SSL_set_tlsext_host_name(c->ssl, G.host);
    }
    errno = 0;
    int r = SSL_connect(c->ssl);
    if (r != 1) {
        enum io s = ssl_io(c, r);
        if (s != IO_WAIT)
            fail(c, E_TLS, ssl_reason(c->ssl)); /* any failed handshake */
        return;
    }
    c->tls_up = 1;
    if (!G.tls_version[0])
        snprintf(G.tls_version, sizeof G.tls_version, "%s", SSL_get_version(c->ssl));
    if (O.new_conn ? c->measured : G.measuring)
        G.handshakes++;
    if (!O.new_conn)
        next_request(c);
    else {
        if (c->measured) /* handshake time: connect start to TLS established */
            vec_push(&G.hs, now_ns() - c->t_conn);
        do_write(c);
    }
}

static void do_write(struct conn *c) {
    if (c->state != S_WRITING) {
        c->state = S_WRITING;
        c->woff = 0;
        c->ps = P_HEAD;
        c->len = c->pos = 0;
    }
    const char *req = G.req[c->ctx];
    size_t reqlen = G.reqlen[c->ctx];
    while (c->woff < reqlen) {
        /* after WANT_*, OpenSSL requires the retry with the same buffer and length */
        errno = 0;
        int r = SSL_write(c->ssl, req + c->woff, (int)(reqlen - c->woff));
        if (r > 0) {
            c->woff += (size_t)r;
            continue;
        }
        enum io s = ssl_io(c, r);
        if (s != IO_WAIT)
            fail(c, s == IO_TLS ? E_TLS : E_CLOSED, ssl_reason(c->ssl));
        return;
    }
    c->state = S_READING;
    set_events(c, EPOLLIN);
}

/* Is tok one of the comma-separated tokens of header value v (case-insensitive)? */
static int has_token(const char *v, size_t n, const char *tok) {
    size_t tl = strlen(tok);
    for (size_t i = 0; i + tl <= n; i++)
        if (!strncasecmp(v + i, tok, tl) && (i == 0 || memchr(" \t,", v[i - 1], 3)) &&
            (i + tl == n || memchr(" \t,;", v[i + tl], 4)))
            return 1;
    return 0;
}

static int name_is(const char *name, size_t n, const char *want) {
    return n == strlen(want) && !strncasecmp(name, want, n);
}

/* Parse a status line plus headers (h .. h+n, n includes the last header's CRLF).
 * Returns -1 malformed, 0 complete without body, 1 body follows, 2 interim 1xx. */
static int parse_head(struct conn *c, const char *h, size_t n) {
    if (n < 14 || memcmp(h, "HTTP/1.", 7) || (h[7] != '0' && h[7] != '1') || h[8] != ' ' ||
        !isdigit((unsigned char)h[9]) || !isdigit((unsigned char)h[10]) ||
        !isdigit((unsigned char)h[11]) || (h[12] != ' ' && h[12] != '\r'))
        return -1;
    c->status = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
    int http10 = h[7] == '0', ka10 = 0, chunked = 0, te_other = 0;
    long long cl = -1;
    c->close_after = 0;

    const char *end = h + n, *l = (const char *)memmem(h, n, "\r\n", 2) + 2;
    while (l < end) {
        const char *e = memmem(l, (size_t)(end - l), "\r\n", 2);
        const char *colon = memchr(l, ':', (size_t)(e - l));
        if (!colon || colon == l)
            return -1;
        const char *v = colon + 1, *ve = e;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t nl = (size_t)(colon - l), vl = (size_t)(ve - v);
        if (name_is(l, nl, "content-length")) {
            long long x = 0;
            for (size_t i = 0; i < vl && x >= 0; i++)
                x = isdigit((unsigned char)v[i]) ? x * 10 + (v[i] - '0') : -1;
            /* junk, absurd size or conflicting lengths: refuse, as RFC 9112 says */
            if (!vl || vl > 15 || x < 0 || (cl >= 0 && cl != x))
                return -1;
            cl = x;
        } else if (name_is(l, nl, "transfer-encoding")) {
            if (has_token(v, vl, "chunked"))
                chunked = 1;
            else
                te_other = 1;
        } else if (name_is(l, nl, "connection")) {
            if (has_token(v, vl, "close"))
                c->close_after = 1;
            if (has_token(v, vl, "keep-alive"))
                ka10 = 1;
        }
        l = e + 2;
    }
    if (http10 && !ka10)
        c->close_after = 1;
    if (c->status < 200)
        return c->status == 101 ? -1 : 2; /* we never asked to switch protocols */
    if (G.is_head || c->status == 204 || c->status == 304)
        return 0;
    if (chunked) {
        c->ps = P_CHUNK_SIZE;
    } else if (cl >= 0 && !te_other) {
        if (cl == 0)
            return 0;
        c->ps = P_BODY_CL;
        c->remaining = (uint64_t)cl;
    } else { /* no framing: the body runs until the server closes */
        c->ps = P_BODY_EOF;
        c->close_after = 1;
    }
    return 1;
}

/* Consume buffered bytes. Returns 1 when the response is complete, 0 to wait
 * for more, -1 on a malformed response. Body bytes are counted, not kept. */
static int parse(struct conn *c) {
    for (;;) {
        char *p = c->buf + c->pos;
        size_t avail = c->len - c->pos, take;
        const char *e;
        switch (c->ps) {
        case P_HEAD: {
            if (!(e = memmem(p, avail, "\r\n\r\n", 4)))
                return avail > MAX_HEAD ? -1 : 0;
            int r = parse_head(c, p, (size_t)(e - p) + 2);
            c->pos += (size_t)(e - p) + 4;
            if (r <= 0)
                return r < 0 ? -1 : 1;
            break; /* r == 2: a 1xx; stay in P_HEAD for the final response */
        }
        case P_BODY_CL:
        case P_CHUNK_DATA:
            take = avail < c->remaining ? avail : (size_t)c->remaining;
            c->pos += take;
            c->remaining -= take;
            if (c->remaining)
                return 0;
            if (c->ps == P_BODY_CL)
                return 1;
            c->ps = P_CHUNK_CRLF;
            break;
        case P_BODY_EOF:
            c->pos += avail;
            return 0;
        case P_CHUNK_SIZE: {
            if (!(e = memmem(p, avail, "\r\n", 2)))
                return avail > MAX_LINE ? -1 : 0;
            char *q; /* hex size; whatever follows (";ext=...") is a chunk extension */
            uint64_t sz = isxdigit((unsigned char)*p) ? strtoull(p, &q, 16) : 0;
            if (!isxdigit((unsigned char)*p) || q - p > 15 || (*q != ';' && *q != '\r' && *q != ' '))
                return -1;
            c->pos += (size_t)(e - p) + 2;
            c->remaining = sz;
            c->ps = sz ? P_CHUNK_DATA : P_TRAILER;
            break;
        }
        case P_CHUNK_CRLF:
            if (avail < 2)
                return 0;
            if (p[0] != '\r' || p[1] != '\n')
                return -1;
            c->pos += 2;
            c->ps = P_CHUNK_SIZE;
            break;
        case P_TRAILER:
            if (!(e = memmem(p, avail, "\r\n", 2)))
                return avail > MAX_LINE ? -1 : 0;
            c->pos += (size_t)(e - p) + 2;
            if (e == p)
                return 1; /* empty line ends the trailer section */
            break;
        }
    }
}

static void response_done(struct conn *c, int eof) {
    uint64_t t = now_ns();
    int leftover = c->len > c->pos; /* bytes nobody asked for: framing is off */
    G.ever_ok = 1;
    if (c->measured) {
        G.requests++;
        vec_push(&G.lat, t - c->t_req);
        if (O.expect && c->status != O.expect)
            G.errors[E_STATUS]++;
        if (leftover)
            G.errors[E_PROTOCOL]++;
    }
    end_attempt(c);
    if (O.new_conn) {
        close_conn(c);
        if (can_start())
            start_conn(c);
    } else if (eof || c->close_after || leftover) {
        close_conn(c);
        reopen(c);
    } else {
        next_request(c);
    }
}

static void do_read(struct conn *c) {
    for (;;) {
        if (c->pos) { /* drop consumed bytes: what remains is at most a partial line */
            memmove(c->buf, c->buf + c->pos, c->len - c->pos);
            c->len -= c->pos;
            c->pos = 0;
        }
        if (c->cap - c->len < 4096) {
            c->cap = c->cap ? c->cap * 2 : BUF_INIT;
            c->buf = xrealloc(c->buf, c->cap);
        }
        errno = 0;
        int r = SSL_read(c->ssl, c->buf + c->len, (int)(c->cap - c->len));
        if (r > 0) {
            c->len += (size_t)r;
            int p = parse(c);
            if (p < 0)
                fail(c, E_PROTOCOL, "malformed HTTP response");
            else if (p > 0)
                response_done(c, 0);
            if (p)
                return;
            continue;
        }
        enum io s = ssl_io(c, r);
        if (s == IO_EOF && c->ps == P_BODY_EOF)
            response_done(c, 1); /* the close is what ends this body */
        else if (s == IO_EOF)
            fail(c, E_CLOSED, "server closed the connection before a complete response");
        else if (s != IO_WAIT)
            fail(c, s == IO_TLS ? E_TLS : E_CLOSED, ssl_reason(c->ssl));
        return;
    }
}

static void on_event(struct conn *c) {
    switch (c->state) {
    case S_CONNECTING: finish_connect(c); break;
    case S_HANDSHAKE: do_handshake(c); break;
    case S_WRITING: do_write(c); break;
    case S_READING: do_read(c); break;
    case S_IDLE: close_conn(c); break;
    default: break;
    }
}

/* Phase changes (warmup -> measuring -> done), timeouts and backoff retries. */
static void tick(uint64_t t) {
    static uint64_t next_scan;
    if (!G.measuring && t >= G.t_measure_at) {
        G.measuring = 1;
        G.t_mstart = t;
        if (O.duration > 0)
            G.t_stop_at = t + (uint64_t)(O.duration * NS);
        getrusage(RUSAGE_SELF, &G.ru0);
    }
    if (G.interrupted || (G.measuring && O.duration > 0 && t >= G.t_stop_at) ||
        (G.measuring && O.total && G.attempts >= O.total && G.inflight == 0)) {
        G.running = 0;
        return;
    }
    if (t < next_scan)
        return;
    next_scan = t + SCAN_NS;
    for (int i = 0; i < O.conns; i++) {
        struct conn *c = &G.c[i];
        if (c->state == S_BACKOFF && t >= c->retry_at) {
            c->state = S_FREE;
            reopen(c);
        } else if (c->state >= S_CONNECTING && c->state <= S_READING && t >= c->deadline) {
            fail(c, E_TIMEOUT, "timeout");
        }
    }
}

/* ---------- setup ---------- */

static void usage(FILE *f) {
    fputs("usage: loadgen --url https://HOST:PORT/PATH [--method POST] [--body STR | --body-file F]\n"
          "               [-H 'Name: value']... [--cert C --key K [--client-id ID] | --cert-list FILE]\n"
          "               [--cacert CA | --insecure] [-c CONNS] [-d SECONDS] [-n REQUESTS]\n"
          "               [--warmup SECONDS] [--timeout SECONDS] [--new-conn] [--tls1.2 | --tls1.3]\n"
          "               [--expect-status CODE] [--json]\n", f);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    long n = -1;
    if (!f || fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET))
        die(2, "cannot read %s: %s", path, strerror(errno));
    char *buf = xrealloc(NULL, (size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n)
        die(2, "cannot read %s", path);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void add_header(const char *h) {
    const char *colon = strchr(h, ':');
    if (!colon || colon == h || strpbrk(h, "\r\n"))
        die(2, "bad header '%s' (expected 'Name: value')", h);
    size_t nl = (size_t)(colon - h), n = strlen(h);
    if (name_is(h, nl, "content-length") || name_is(h, nl, "transfer-encoding"))
        die(2, "header '%.*s' is set by loadgen from the body", (int)nl, h);
    O.user_host |= name_is(h, nl, "host");
    O.user_conn |= name_is(h, nl, "connection");
    O.headers = xrealloc(O.headers, O.headers_len + n + 3);
    memcpy(O.headers + O.headers_len, h, n);
    memcpy(O.headers + O.headers_len + n, "\r\n", 3);
    O.headers_len += n + 2;
}

static void parse_url(void) {
    if (strncmp(O.url, "https://", 8))
        die(2, "--url must start with https://");
    const char *u = O.url + 8, *p = u + strcspn(u, ":/?");
    size_t hl = (size_t)(p - u);
    if (!hl || hl >= sizeof G.host || memchr(u, '@', hl) || *u == '[')
        die(2, "bad --url host (IPv4 address or name expected)");
    memcpy(G.host, u, hl);
    long port = 443;
    if (*p == ':' && (!isdigit((unsigned char)p[1]) || (port = strtol(p + 1, (char **)&p, 10)) > 65535))
        die(2, "bad --url port");
    if (!port || (*p && *p != '/' && *p != '?'))
        die(2, "bad --url");
    snprintf(G.port, sizeof G.port, "%ld", port);
    G.path = xrealloc(NULL, strlen(p) + 2); /* "https://h:1" and "https://h:1?q" get a "/" */
    sprintf(G.path, "%s%s", *p == '/' ? "" : "/", p);

    /* IPv4 only: "localhost" must not turn into ::1 when the server listens on 127.0.0.1 */
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
    int e = getaddrinfo(G.host, G.port, &hints, &res);
    if (e)
        die(1, "cannot resolve %s: %s", G.host, gai_strerror(e));
    memcpy(&G.addr, res->ai_addr, res->ai_addrlen);
    G.addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    struct in_addr tmp;
    G.is_ip = inet_pton(AF_INET, G.host, &tmp) == 1;
}

static SSL_CTX *make_ctx(const char *cert, const char *key) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        die(1, "SSL_CTX_new: %s", ssl_reason(NULL));
    /* Every connection does a full handshake: we never call SSL_set_session,
     * and tickets and the client session cache are off for good measure. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_min_proto_version(ctx, O.tls_ver ? O.tls_ver : TLS1_2_VERSION);
    if (O.tls_ver)
        SSL_CTX_set_max_proto_version(ctx, O.tls_ver);
    SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x08http/1.1", 9); /* never h2 */
    if (O.insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    } else {
        if (O.cacert ? !SSL_CTX_load_verify_locations(ctx, O.cacert, NULL)
                     : !SSL_CTX_set_default_verify_paths(ctx))
            die(2, "cannot load CA %s: %s", O.cacert ? O.cacert : "defaults", ssl_reason(NULL));
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        X509_VERIFY_PARAM *vp = SSL_CTX_get0_param(ctx);
        if (G.is_ip ? !X509_VERIFY_PARAM_set1_ip_asc(vp, G.host)
                    : !X509_VERIFY_PARAM_set1_host(vp, G.host, 0))
            die(2, "cannot set verification name %s", G.host);
    }
    if (cert) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
            die(2, "cannot load client certificate %s: %s", cert, ssl_reason(NULL));
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
            die(2, "cannot load client key %s: %s", key, ssl_reason(NULL));
        if (SSL_CTX_check_private_key(ctx) != 1)
            die(2, "client key %s does not match certificate %s", key, cert);
    }
    return ctx;
}

static void add_ctx(const char *cert, const char *key, const char *id) {
    G.ctx = xrealloc(G.ctx, (size_t)(G.nctx + 1) * sizeof *G.ctx);
    G.certs = xrealloc(G.certs, (size_t)(G.nctx + 1) * sizeof *G.certs);
    G.ids = xrealloc(G.ids, (size_t)(G.nctx + 1) * sizeof *G.ids);
    G.ctx[G.nctx] = make_ctx(cert, key);
    G.certs[G.nctx] = cert ? strdup(cert) : NULL;
    G.ids[G.nctx] = id ? strdup(id) : NULL;
    G.nctx++;
}

static void load_cert_list(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f)
        die(2, "cannot read %s: %s", path, strerror(errno));
    char *line = NULL, *save;
    size_t cap = 0;
    int lineno = 0;
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        char *cert = strtok_r(line, " \t\r\n", &save);
        if (!cert || *cert == '#')
            continue;
        char *key = strtok_r(NULL, " \t\r\n", &save);
        char *id = key ? strtok_r(NULL, " \t\r\n", &save) : NULL; /* optional client_id */
        char *more = id && *id != '#' ? strtok_r(NULL, " \t\r\n", &save) : NULL;
        if (id && *id == '#') /* '#' starts a comment, also after the fields */
            id = NULL;
        if (!key || *key == '#' || (more && *more != '#'))
            die(2, "%s:%d: expected 'certpath keypath [client_id]'", path, lineno);
        add_ctx(cert, key, id);
    }
    free(line);
    fclose(f);
    if (!G.nctx)
        die(2, "%s: no certificate pairs", path);
}

#define ID_VAR "{client_id}"

/* The body for context i: every ID_VAR in the --body template replaced by its client_id,
 * verbatim (not URL-encoded). Returns a malloc'd buffer; *len gets its length. */
static char *expand_body(int i, size_t *len) {
    size_t vl = strlen(ID_VAR), n = 0;
    for (const char *p = O.body; p && (p = memmem(p, O.body_len - (size_t)(p - O.body), ID_VAR, vl)); p += vl)
        n++;
    if (n && !G.ids[i])
        die(2, "--body has %s but %s has no client_id (a third column in --cert-list, or"
            " --client-id with --cert)", ID_VAR, G.certs[i] ? G.certs[i] : "the connection");
    size_t il = n ? strlen(G.ids[i]) : 0;
    char *out = xrealloc(NULL, O.body_len + n * il + 1), *w = out;
    const char *r = O.body, *end = O.body + O.body_len, *hit;
    while (r && r < end && (hit = memmem(r, (size_t)(end - r), ID_VAR, vl))) {
        memcpy(w, r, (size_t)(hit - r)), w += hit - r;
        memcpy(w, G.ids[i], il), w += il;
        r = hit + vl;
    }
    if (r && r < end)
        memcpy(w, r, (size_t)(end - r)), w += end - r;
    *len = (size_t)(w - out);
    return out;
}

/* One request per TLS context: they differ only when the body names {client_id}. */
static void build_requests(void) {
    int has_body = O.body_len || !strcasecmp(O.method, "POST") || !strcasecmp(O.method, "PUT") ||
                   !strcasecmp(O.method, "PATCH");
    char host[300];
    snprintf(host, sizeof host, "%s%s%s", G.host, strcmp(G.port, "443") ? ":" : "",
             strcmp(G.port, "443") ? G.port : "");
    G.req = xrealloc(NULL, (size_t)G.nctx * sizeof *G.req);
    G.reqlen = xrealloc(NULL, (size_t)G.nctx * sizeof *G.reqlen);
    for (int i = 0; i < G.nctx; i++) {
        size_t body_len;
        char *body = expand_body(i, &body_len), clen[64] = "";
        if (has_body)
            snprintf(clen, sizeof clen, "Content-Length: %zu\r\n", body_len);
        size_t cap = strlen(O.method) + strlen(G.path) + sizeof host + O.headers_len + body_len + 200;
        G.req[i] = xrealloc(NULL, cap);
        int n = snprintf(G.req[i], cap, "%s %s HTTP/1.1\r\n%s%s%s%.*s%s%s\r\n", O.method, G.path,
                         O.user_host ? "" : "Host: ", O.user_host ? "" : host, O.user_host ? "" : "\r\n",
                         (int)O.headers_len, O.headers ? O.headers : "", clen,
                         O.new_conn && !O.user_conn ? "Connection: close\r\n" : "");
        if (body_len)
            memcpy(G.req[i] + n, body, body_len);
        G.reqlen[i] = (size_t)n + body_len;
        free(body);
    }
}

static void parse_args(int argc, char **argv) {
    enum { O_URL = 256, O_METHOD, O_BODY, O_BODYF, O_CERT, O_KEY, O_CLIST, O_CA, O_INSEC,
           O_WARM, O_NEWC, O_T12, O_T13, O_EXP, O_TMO, O_JSON, O_CID };
    static const struct option lo[] = {
        {"url", 1, 0, O_URL}, {"method", 1, 0, O_METHOD}, {"body", 1, 0, O_BODY},
        {"body-file", 1, 0, O_BODYF}, {"header", 1, 0, 'H'}, {"cert", 1, 0, O_CERT},
        {"key", 1, 0, O_KEY}, {"cert-list", 1, 0, O_CLIST}, {"cacert", 1, 0, O_CA},
        {"insecure", 0, 0, O_INSEC}, {"connections", 1, 0, 'c'}, {"duration", 1, 0, 'd'},
        {"requests", 1, 0, 'n'}, {"warmup", 1, 0, O_WARM}, {"new-conn", 0, 0, O_NEWC},
        {"tls1.2", 0, 0, O_T12}, {"tls1.3", 0, 0, O_T13}, {"expect-status", 1, 0, O_EXP},
        {"timeout", 1, 0, O_TMO}, {"json", 0, 0, O_JSON}, {"client-id", 1, 0, O_CID},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int o;
    opterr = 0;
    while ((o = getopt_long(argc, argv, ":c:d:n:H:h", lo, NULL)) != -1) {
        switch (o) {
        case O_URL: O.url = optarg; break;
        case O_METHOD: O.method = optarg; break;
        case O_BODY: free(O.body); O.body = strdup(optarg); O.body_len = strlen(optarg); break;
        case O_BODYF: O.body_file = optarg; break;
        case 'H': add_header(optarg); break;
        case O_CERT: O.cert = optarg; break;
        case O_KEY: O.key = optarg; break;
        case O_CID: O.client_id = optarg; break;
        case O_CLIST: O.cert_list = optarg; break;
        case O_CA: O.cacert = optarg; break;
        case O_INSEC: O.insecure = 1; break;
        case 'c': O.conns = (int)parse_num(optarg, "-c", 1); break;
        case 'd': O.duration = parse_num(optarg, "-d", 0.001); break;
        case 'n': O.total = (long long)parse_num(optarg, "-n", 1); break;
        case O_WARM: O.warmup = parse_num(optarg, "--warmup", 0); break;
        case O_NEWC: O.new_conn = 1; break;
        case O_T12: O.tls_ver = TLS1_2_VERSION; break;
        case O_T13: O.tls_ver = TLS1_3_VERSION; break;
        case O_EXP: O.expect = (int)parse_num(optarg, "--expect-status", 100); break;
        case O_TMO: O.timeout = parse_num(optarg, "--timeout", 0.001); break;
        case O_JSON: O.json = 1; break;
        case 'h': usage(stdout); exit(0);
        case ':': die(2, "option '%s' needs a value (see --help)", argv[optind - 1]);
        default: die(2, "unknown option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        die(2, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!O.url)
        die(2, "--url is required (see --help)");
    if (!*O.method || O.method[strcspn(O.method, " \t\r\n")])
        die(2, "bad --method '%s'", O.method);
    if ((O.body_file && O.body) || (O.cert && O.cert_list) || (O.insecure && O.cacert))
        die(2, "use only one of --body/--body-file, --cert/--cert-list, --cacert/--insecure");
    if (!O.cert != !O.key)
        die(2, "--cert and --key go together");
    if (O.client_id && O.cert_list)
        die(2, "--client-id is for --cert; with --cert-list give a third column");
    if (O.expect > 599 || O.conns > 100000)
        die(2, "value out of range");
    if (O.duration <= 0 && !O.total)
        O.duration = 10;
    if (O.body_file)
        O.body = read_file(O.body_file, &O.body_len);
    G.is_head = !strcasecmp(O.method, "HEAD");
}

/* ---------- report ---------- */

static void report(void) {
    double dur = (double)(G.t_end - G.t_mstart) / 1e9;
#define TV(a, b) ((double)((a).tv_sec - (b).tv_sec) + (double)((a).tv_usec - (b).tv_usec) / 1e6)
    double us = TV(G.ru1.ru_utime, G.ru0.ru_utime), sy = TV(G.ru1.ru_stime, G.ru0.ru_stime);
    double rps = dur > 0 ? (double)G.requests / dur : 0, cpu = dur > 0 ? (us + sy) / dur * 100 : 0;
    long long errs = 0;
    vec_sort(&G.lat);
    vec_sort(&G.hs);
    double p50 = pct_ms(&G.lat, 50), p90 = pct_ms(&G.lat, 90), p99 = pct_ms(&G.lat, 99),
           mx = pct_ms(&G.lat, 100), h50 = pct_ms(&G.hs, 50), h99 = pct_ms(&G.hs, 99);
    const char *mode = O.new_conn ? "new-conn" : "keep-alive";
    for (int k = 0; k < E_KINDS; k++)
        errs += G.errors[k];

    if (O.json) {
#define JNUM(name, v) printf(isnan(v) ? "\"%s\":null," : "\"%s\":%.3f,", name, v)
        printf("{\"requests\":%lld,\"ok\":%lld,", G.requests, G.requests - G.errors[E_STATUS]);
        JNUM("duration_s", dur); JNUM("rps", rps);
        JNUM("p50_ms", p50); JNUM("p90_ms", p90); JNUM("p99_ms", p99); JNUM("max_ms", mx);
        printf("\"errors\":{");
        for (int k = 0; k < E_KINDS; k++)
            printf("%s\"%s\":%lld", k ? "," : "", err_names[k], G.errors[k]);
        printf(",\"total\":%lld},", errs);
        if (O.new_conn) {
            JNUM("handshake_p50_ms", h50); JNUM("handshake_p99_ms", h99);
        }
        JNUM("cpu_user_s", us); JNUM("cpu_sys_s", sy); JNUM("cpu_pct", cpu);
        printf("\"connections\":%d,\"handshakes\":%lld,\"reconnects\":%lld,\"mode\":\"%s\","
               "\"tls_version\":\"%s\"}\n", O.conns, G.handshakes, G.reconnects, mode, G.tls_version);
        return;
    }
    printf("target       %s %s (%s, %s, %d connections)\n", O.method, O.url, mode,
           G.tls_version[0] ? G.tls_version : "no TLS session", O.conns);
    printf("duration     %.2f s (after %.1f s warmup)\n", dur, O.warmup);
    printf("requests     %lld  (%.1f req/s)\n", G.requests, rps);
    if (G.lat.n)
        printf("latency ms   p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", p50, p90, p99, mx);
    if (O.new_conn && G.hs.n)
        printf("handshake ms p50 %.3f  p99 %.3f  (connect start to TLS established)\n", h50, h99);
    printf("errors       %lld:", errs);
    for (int k = 0; k < E_KINDS; k++)
        printf(" %s %lld", err_names[k], G.errors[k]);
    printf("\nconnections  %lld handshakes, %lld reconnects\n", G.handshakes, G.reconnects);
    printf("loadgen cpu  user %.2f s + sys %.2f s = %.1f%% of one core\n", us, sy, cpu);
}

static void on_sigint(int sig) {
    (void)sig;
    G.interrupted = 1;
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    parse_url();
    if (O.cert_list)
        load_cert_list(O.cert_list);
    else
        add_ctx(O.cert, O.key, O.client_id);
    build_requests();

    /* each connection needs one descriptor; raise the soft limit if we can */
    struct rlimit rl;
    rlim_t need = (rlim_t)O.conns + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < need)
            die(2, "-c %d needs %llu file descriptors, limit is %llu", O.conns,
                (unsigned long long)need, (unsigned long long)rl.rlim_cur);
    }
    signal(SIGPIPE, SIG_IGN); /* a peer reset must be an error code, not a signal */
    signal(SIGINT, on_sigint);
    signal(SIGTERM, on_sigint);

    G.ep = epoll_create1(EPOLL_CLOEXEC);
    if (G.ep < 0)
        die(1, "epoll_create1: %s", strerror(errno));
    G.c = calloc((size_t)O.conns, sizeof *G.c);
    if (!G.c)
        die(1, "out of memory");
    G.running = 1;
    uint64_t t0 = now_ns();
    G.t_measure_at = t0 + (uint64_t)(O.warmup * NS);
    tick(t0); /* with no warmup, measuring starts before the first connection */
    for (int i = 0; i < O.conns; i++) {
        G.c[i].fd = -1;
        if (can_start())
            start_conn(&G.c[i]);
    }

    struct epoll_event ev[256];
    while (G.running) {
        int n = epoll_wait(G.ep, ev, 256, 5);
        if (n < 0 && errno != EINTR)
            die(1, "epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++)
            on_event(ev[i].data.ptr);
        tick(now_ns());
    }
    G.t_end = now_ns();
    getrusage(RUSAGE_SELF, &G.ru1);
    if (!G.measuring) { /* interrupted during warmup */
        G.t_mstart = G.t_end;
        G.ru0 = G.ru1;
    }
    report();

    for (int i = 0; i < O.conns; i++)
        close_conn(&G.c[i]), free(G.c[i].buf);
    for (int i = 0; i < G.nctx; i++)
        SSL_CTX_free(G.ctx[i]), free(G.certs[i]), free(G.ids[i]), free(G.req[i]);
    free(G.ctx); free(G.certs); free(G.ids); free(G.c); free(G.req); free(G.reqlen); free(G.path);
    free(G.lat.v); free(G.hs.v); free(O.body); free(O.headers);
    close(G.ep);
    if (!G.requests) {
        fprintf(stderr, "loadgen: no responses received from %s\n", O.url);
        return 1;
    }
    return 0;
}
