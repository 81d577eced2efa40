/*
 * wsload: the WebSocket load client of the benchmarks in bench/. A single-threaded epoll
 * client in C, so that the load generator costs a few microseconds per received frame and
 * is never the bottleneck of a fan-out benchmark. It speaks three protocols to one workload:
 *
 *   mangu     this server (docs/protocol.md): token in the query, join:room, message:send
 *   bare      the bare Tornado broadcast reference: raw text, echoed to every connection
 *   socketio  python-socketio over the Engine.IO v4 websocket transport, a room
 *
 * Roles:
 *   members    open --count connections, join --room, then record every room message
 *              (latency from the send time it carries, duplicates, count per connection).
 *              Prints {"ready":n} once all joined; prints its stats as one JSON line and
 *              exits on SIGTERM or "stop" on stdin.
 *   publisher  one connection in the room; sends --messages room messages of about --size
 *              bytes, each once its own copy came back; prints its stats and exits.
 *   idle       open --count connections, join --room, print {"ready":n}, hold them.
 *
 * A room message's text is "<id>|<sent, CLOCK_MONOTONIC ns>|<padding>".
 *
 * Build: cc -O2 -o wsload wsload.c      (bench scripts build it on first use)
 * Usage: wsload --role members --proto mangu --port 3001 --path /ws --count 500
 *               --room bench --tokens tokens.txt [--messages 200]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum proto { P_MANGU, P_BARE, P_SOCKETIO };
enum phase { CONNECTING, UPGRADING, JOINING, JOINED, DEAD };

typedef struct {
    int fd;
    enum phase phase;
    int step;               /* protocol-specific join step */
    char *buf;
    size_t len, cap;
    uint8_t *seen;          /* bitmap of message ids received */
    long received;
} conn_t;

static enum proto proto = P_MANGU;
static const char *role = "members", *host = "127.0.0.1", *path = "/ws", *room = "bench", *tokens_file = NULL;
static int port = 3001, count = 1, messages = 200, size = 100, concurrency = 200;
static char **tokens = NULL;
static int ntokens = 0;
static volatile sig_atomic_t stop_flag = 0;
static int epfd;
static conn_t *conns;
static int joined = 0, ready_printed = 0;
static double *lat = NULL;
static long nlat = 0, latcap = 0, duplicates = 0, received_total = 0;
static double first_at = -1, last_at = -1;
static long waiting_id = -1;         /* publisher: the id whose own copy it waits for */

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_ms(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3 + ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3;
}

static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static void die(const char *what) { perror(what); exit(1); }

static void send_all(int fd, const char *data, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, data, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) { usleep(100); continue; }
            return;
        }
        data += w;
        n -= (size_t)w;
    }
}

/* A masked client frame (opcode 1 text, 10 pong). */
static void send_frame(conn_t *c, int opcode, const char *payload, size_t n) {
    static char frame[70000];
    const unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    size_t h = 0;
    frame[h++] = (char)(0x80 | opcode);
    if (n < 126) frame[h++] = (char)(0x80 | n);
    else { frame[h++] = (char)(0x80 | 126); frame[h++] = (char)(n >> 8); frame[h++] = (char)(n & 0xff); }
    memcpy(frame + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < n; i++) frame[h + i] = payload[i] ^ mask[i & 3];
    send_all(c->fd, frame, h + n);
}

static void send_text(conn_t *c, const char *s) { send_frame(c, 1, s, strlen(s)); }

static void mark_joined(conn_t *c) {
    if (c->phase != JOINED) {
        c->phase = JOINED;
        joined++;
    }
}

static void send_room_message(conn_t *c, long id) {
    static char text[70000], msg[70100];
    int pad = size > 40 ? size - 40 : 0;
    int n = snprintf(text, sizeof text, "%ld|%lld|", id, now_ns());
    memset(text + n, 'x', (size_t)pad);
    text[n + pad] = 0;
    if (proto == P_MANGU)
        snprintf(msg, sizeof msg, "{\"event\":\"message:send\",\"data\":{\"room\":\"%s\",\"text\":\"%s\",\"client_msg_id\":\"p%ld\"}}", room, text, id);
    else if (proto == P_SOCKETIO)
        snprintf(msg, sizeof msg, "42[\"send\",{\"room\":\"%s\",\"text\":\"%s\"}]", room, text);
    else
        snprintf(msg, sizeof msg, "%s", text);
    send_text(c, msg);
}

/* The room-message text inside a frame payload, or NULL. */
static const char *room_text(const char *p, size_t n) {
    if (proto == P_BARE) return p;
    if (proto == P_MANGU) {
        if (n < 28 || memcmp(p, "{\"event\":\"message:received\"", 27) != 0) return NULL;
    } else if (n < 12 || memcmp(p, "42[\"message\"", 12) != 0) {
        return NULL;
    }
    const char *t = memmem(p, n, "\"text\":\"", 8);
    return t ? t + 8 : NULL;
}

static void on_room_message(conn_t *c, const char *text) {
    char *end;
    long id = strtol(text, &end, 10);
    if (*end != '|' || id < 0) return;
    long long sent = strtoll(end + 1, NULL, 10);
    double t = now_ms();
    if (strcmp(role, "publisher") == 0) {
        if (id == waiting_id) waiting_id = -1;
        return;
    }
    if (id < messages * 4L) {
        if (c->seen[id >> 3] & (1 << (id & 7))) duplicates++;
        else { c->seen[id >> 3] |= (uint8_t)(1 << (id & 7)); c->received++; }
    }
    received_total++;
    if (nlat == latcap) {
        latcap = latcap ? latcap * 2 : 1 << 16;
        lat = realloc(lat, sizeof(double) * (size_t)latcap);
    }
    lat[nlat++] = t - sent / 1e6;
    if (first_at < 0) first_at = t;
    last_at = t;
}

static void on_text(conn_t *c, const char *p, size_t n) {
    if (c->phase == JOINED) {
        const char *t = room_text(p, n);
        if (t) { on_room_message(c, t); return; }
        if (proto == P_SOCKETIO && n == 1 && p[0] == '2') send_text(c, "3");
        return;
    }
    char msg[256];
    if (proto == P_MANGU) {
        if (c->step == 0 && memmem(p, n, "\"session:ready\"", 15)) {
            snprintf(msg, sizeof msg, "{\"event\":\"join:room\",\"data\":{\"room\":\"%s\"},\"ref\":\"j\"}", room);
            send_text(c, msg);
            c->step = 1;
        } else if (c->step == 1 && memmem(p, n, "\"ref\":\"j\"", 9)) {
            mark_joined(c);
        }
    } else if (proto == P_SOCKETIO) {
        if (n == 1 && p[0] == '2') { send_text(c, "3"); return; }
        if (c->step == 0 && n > 0 && p[0] == '0') { send_text(c, "40"); c->step = 1; }
        else if (c->step == 1 && n >= 2 && p[0] == '4' && p[1] == '0') {
            snprintf(msg, sizeof msg, "421[\"join\",\"%s\"]", room);
            send_text(c, msg);
            c->step = 2;
        } else if (c->step == 2 && n >= 3 && memcmp(p, "431", 3) == 0) {
            mark_joined(c);
        }
    }
}

static void close_conn(conn_t *c) {
    if (c->phase != DEAD) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        if (c->phase == JOINED) joined--;
        c->phase = DEAD;
    }
}

/* Parse every complete frame in the buffer. */
static void parse_frames(conn_t *c) {
    size_t off = 0;
    while (c->len - off >= 2) {
        unsigned char *b = (unsigned char *)c->buf + off;
        int opcode = b[0] & 0x0f;
        uint64_t plen = b[1] & 0x7f;
        size_t h = 2;
        if (plen == 126) {
            if (c->len - off < 4) break;
            plen = ((uint64_t)b[2] << 8) | b[3];
            h = 4;
        } else if (plen == 127) {
            if (c->len - off < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = (plen << 8) | b[2 + i];
            h = 10;
        }
        if (c->len - off < h + plen) break;
        char *payload = c->buf + off + h;
        if (opcode == 1) {
            char saved = payload[plen];
            payload[plen] = 0;
            on_text(c, payload, (size_t)plen);
            payload[plen] = saved;
        } else if (opcode == 9) {
            send_frame(c, 10, payload, (size_t)plen);
        } else if (opcode == 8) {
            close_conn(c);
            return;
        }
        off += h + plen;
    }
    if (off) {
        memmove(c->buf, c->buf + off, c->len - off);
        c->len -= off;
    }
}

static void on_readable(conn_t *c) {
    for (;;) {
        if (c->cap - c->len < 65536) {
            c->cap = c->cap * 2 + 65536;
            c->buf = realloc(c->buf, c->cap + 1);
        }
        ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
        if (r == 0) { close_conn(c); return; }
        if (r < 0) {
            if (errno == EAGAIN) break;
            if (errno == EINTR) continue;
            close_conn(c);
            return;
        }
        c->len += (size_t)r;
        if (c->phase == UPGRADING) {
            c->buf[c->len] = 0;
            char *end = strstr(c->buf, "\r\n\r\n");
            if (!end) continue;
            if (strncmp(c->buf, "HTTP/1.1 101", 12) != 0) {
                fprintf(stderr, "upgrade refused: %.80s\n", c->buf);
                close_conn(c);
                return;
            }
            size_t hl = (size_t)(end + 4 - c->buf);
            memmove(c->buf, c->buf + hl, c->len - hl);
            c->len -= hl;
            c->phase = JOINING;
            if (proto == P_BARE) mark_joined(c);
        }
        parse_frames(c);
        if (c->phase == DEAD) return;
    }
}

static void start_connect(conn_t *c, int index) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) die("connect");
    c->phase = CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)index};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void on_connected(conn_t *c, int index) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) { errno = err; perror("connect"); close_conn(c); return; }
    char req[10000];
    const char *target = path;
    char pathbuf[9000];
    if (proto == P_MANGU) {
        snprintf(pathbuf, sizeof pathbuf, "%s?token=%s", path, tokens[index % ntokens]);
        target = pathbuf;
    } else if (proto == P_SOCKETIO) {
        target = "/socket.io/?EIO=4&transport=websocket";
    }
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     target, host, port);
    send_all(c->fd, req, (size_t)n);
    c->phase = UPGRADING;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)index};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void load_tokens(void) {
    if (proto != P_MANGU) return;
    if (!tokens_file) { fprintf(stderr, "--tokens is required for --proto mangu\n"); exit(2); }
    FILE *f = fopen(tokens_file, "r");
    if (!f) die("tokens");
    char line[9000];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!*line) continue;
        tokens = realloc(tokens, sizeof(char *) * (size_t)(ntokens + 1));
        tokens[ntokens++] = strdup(line);
    }
    fclose(f);
    if (!ntokens) { fprintf(stderr, "no tokens in %s\n", tokens_file); exit(2); }
}

int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--role")) role = v;
        else if (!strcmp(k, "--proto")) proto = !strcmp(v, "mangu") ? P_MANGU : !strcmp(v, "bare") ? P_BARE : P_SOCKETIO;
        else if (!strcmp(k, "--host")) host = v;
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--path")) path = v;
        else if (!strcmp(k, "--count")) count = atoi(v);
        else if (!strcmp(k, "--room")) room = v;
        else if (!strcmp(k, "--messages")) messages = atoi(v);
        else if (!strcmp(k, "--size")) size = atoi(v);
        else if (!strcmp(k, "--concurrency")) concurrency = atoi(v);
        else if (!strcmp(k, "--tokens")) tokens_file = v;
        else { fprintf(stderr, "unknown option %s\n", k); return 2; }
    }
    int publisher = !strcmp(role, "publisher");
    if (publisher) count = 1;
    load_tokens();
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    epfd = epoll_create1(0);
    conns = calloc((size_t)count, sizeof(conn_t));
    size_t bitmap = (size_t)messages * 4 / 8 + 1;
    int started = 0;
    struct epoll_event events[512];
    double cpu_start = 0, t_start = 0;
    long sent = 0;

    while (!stop_flag) {
        int inflight = 0;
        if (started < count)
            for (int i = 0; i < started; i++)
                if (conns[i].phase == CONNECTING || conns[i].phase == UPGRADING || conns[i].phase == JOINING) inflight++;
        while (started < count && inflight < concurrency) {
            conns[started].seen = calloc(bitmap, 1);
            start_connect(&conns[started], started);
            started++;
            inflight++;
        }
        int n = epoll_wait(epfd, events, 512, 50);
        for (int e = 0; e < n; e++) {
            int index = (int)events[e].data.u32;
            conn_t *c = &conns[index];
            if (c->phase == CONNECTING) {
                if (events[e].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c, index);
                continue;
            }
            if (c->phase != DEAD) on_readable(c);
        }
        if (!ready_printed && started == count && joined == count) {
            ready_printed = 1;
            if (!publisher) { printf("{\"ready\":%d}\n", joined); fflush(stdout); }
            cpu_start = cpu_ms();
            t_start = now_ms();
        }
        if (publisher && ready_printed) {
            if (conns[0].phase == DEAD) { fprintf(stderr, "publisher connection closed\n"); return 1; }
            if (waiting_id < 0) {
                if (sent == messages) break;
                waiting_id = sent;
                send_room_message(&conns[0], sent);
                sent++;
            }
        }
        char cmd[64];
        ssize_t r = read(0, cmd, sizeof cmd);
        if (r > 0 && memmem(cmd, (size_t)r, "stop", 4)) stop_flag = 1;
    }

    if (publisher) {
        printf("{\"sent\":%ld,\"elapsed_ms\":%.3f,\"cpu_ms\":%.3f}\n", sent, now_ms() - t_start, cpu_ms() - cpu_start);
        return 0;
    }
    qsort(lat, (size_t)nlat, sizeof(double), cmp_double);
    long min_pm = -1, max_pm = 0, open_conns = 0;
    for (int i = 0; i < count; i++) {
        if (conns[i].phase == JOINED) open_conns++;
        if (min_pm < 0 || conns[i].received < min_pm) min_pm = conns[i].received;
        if (conns[i].received > max_pm) max_pm = conns[i].received;
    }
    printf("{\"received\":%ld,\"duplicates\":%ld,\"connections\":%d,\"open\":%ld,\"min_per_member\":%ld,"
           "\"max_per_member\":%ld,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,\"first_at\":%.3f,"
           "\"last_at\":%.3f,\"cpu_ms\":%.3f}\n",
           received_total, duplicates, count, open_conns, min_pm, max_pm,
           nlat ? lat[nlat / 2] : 0.0, nlat ? lat[(long)(nlat * 0.99)] : 0.0, nlat ? lat[nlat - 1] : 0.0,
           first_at, last_at, cpu_ms() - cpu_start);
    fflush(stdout);
    return 0;
}
