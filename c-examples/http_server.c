/*
 * http_server — the "Hello, world!" HTTP servers of seeds 003/004 (examples 3-6) on eploop.
 *
 * usage: http_server PORT [-q] [--host ADDR] [--edge] [--cork] [--nodelay] [--backlog N]
 *                         [--keep-alive] [--root DIR]
 *   PORT          TCP port; 0 picks a free one (printed on the "listening" line)
 *   -q            quiet: print only the "listening" line (for benchmarks)
 *   --host ADDR   address to bind (default 127.0.0.1)
 *   --edge        edge-triggered registration (example 4); behaviour is identical
 *   --cork        TCP_CORK on around each batch of responses (example 5)
 *   --nodelay     TCP_NODELAY on every accepted connection (example 6)
 *   --backlog N   listen backlog (default SOMAXCONN; the seeds used 1)
 *   --keep-alive  HTTP/1.1 persistent connections: pipelined requests are answered in order
 *                 with "HTTP/1.1 200 OK"; "Connection: close" (or HTTP/1.0 without
 *                 "Connection: keep-alive") ends the connection after its response.
 *   --root DIR    serve files: "GET /NAME" answers with the file DIR/NAME (a plain name: no
 *                 "/" or ".." inside), sent with ep_send_file (sendfile(2): the bytes never pass
 *                 through this process), Content-Length from fstat; 404 for anything else.
 *                 HTTP/1.0-style close after the response unless --keep-alive.
 *
 * Default (the seed behaviour): accumulate the request until "\n\n" or "\n\r\n", print a dashed
 * line and the request, send the HTTP/1.0 response, close gracefully (flush, FIN).
 * A request header larger than 8 KiB closes the connection without a response.
 *
 * stdout, line-buffered (the event log, see the README): listening / accept / close lines; each request
 * is printed after a line of 40 dashes, every request line indented by two spaces.
 * SIGINT/SIGTERM stop the loop; open connections are closed (close ... loop_freed 0); exit 0.
 */
#include <eploop.h>

#include "eventlog.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_REQUEST_HEADER 8192

static const char RESPONSE_1_0[] = "HTTP/1.0 200 OK\r\n"
                                   "Date: Mon, 1 Jan 1996 01:01:01 GMT\r\n"
                                   "Content-Type: text/plain\r\n"
                                   "Content-Length: 13\r\n"
                                   "\r\n"
                                   "Hello, world!";
static const char BODY[] = "Hello, world!";

/* Per-connection state, attached with ep_set_user in on_accept and freed in on_close. */
struct conn {
  int closing;       /* ep_close() called: ignore whatever else arrives */
  size_t body_left;  /* request body bytes still to skip (Content-Length) */
  size_t len;        /* bytes of request header buffered in buf */
  char buf[MAX_REQUEST_HEADER];
};

struct request {
  int is_head;        /* HEAD: the response has no body */
  int keep_alive;     /* the connection stays open after the response */
  int http_1_0;       /* answer keep-alive explicitly to an HTTP/1.0 client */
  size_t body_length; /* Content-Length of the request body */
};

static struct {
  int quiet, edge, cork, nodelay, keep_alive, backlog;
  const char *host;
  const char *root; /* --root DIR: serve files from DIR */
} g_opt = {.host = "127.0.0.1"};

static ep_id g_listener;

static void report(ep_id conn, const char *what, int rc) {
  fprintf(stderr, "http_server: connection %" PRIu64 ": %s: %s\n", conn, what, ep_strerror(rc));
}

static void set_tcp_option(ep_loop *loop, ep_id conn, int option, int on) {
  int fd = ep_fd(loop, conn);
  if (fd < 0) {
    report(conn, "ep_fd", fd);
    return;
  }
  if (setsockopt(fd, IPPROTO_TCP, option, &on, sizeof on) != 0) report(conn, "setsockopt", -errno);
}

/* Start a graceful close: queued responses are flushed, then FIN; on_close(LOCAL) follows. */
static void finish(ep_loop *loop, ep_id conn, struct conn *c) {
  c->closing = 1;
  int rc = ep_close(loop, conn);
  if (rc < 0) report(conn, "ep_close", rc);
}

/* Print the request header, one line per request line, after the seed's dashed line. */
static void print_request(const char *text, size_t len) {
  printf("----------------------------------------\n");
  size_t start = 0;
  while (start < len) {
    const char *nl = memchr(text + start, '\n', len - start);
    size_t end = nl ? (size_t)(nl - text) : len;
    size_t line_end = end;
    if (line_end > start && text[line_end - 1] == '\r') line_end--;
    if (line_end > start) {
      fputs("  ", stdout);
      for (size_t i = start; i < line_end; i++) {
        unsigned char ch = (unsigned char)text[i];
        putchar(ch >= 0x20 && ch < 0x7f ? ch : '.');
      }
      putchar('\n');
    }
    start = end + 1;
  }
}

/* Length of the request header including its terminator ("\n\n" or "\n\r\n"), or 0. */
static size_t header_length(const char *buf, size_t len) {
  const char *lf_lf = memmem(buf, len, "\n\n", 2);
  const char *lf_crlf = memmem(buf, len, "\n\r\n", 3);
  if (lf_lf && (!lf_crlf || lf_lf < lf_crlf)) return (size_t)(lf_lf - buf) + 2;
  if (lf_crlf) return (size_t)(lf_crlf - buf) + 3;
  return 0;
}

/* Does the comma-separated header value contain token (case-insensitive)? */
static int has_token(const char *value, size_t len, const char *token) {
  size_t token_len = strlen(token);
  size_t i = 0;
  while (i < len) {
    while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == ',')) i++;
    size_t start = i;
    while (i < len && value[i] != ',') i++;
    size_t end = i;
    while (end > start && (value[end - 1] == ' ' || value[end - 1] == '\t')) end--;
    if (end - start == token_len && strncasecmp(value + start, token, token_len) == 0) return 1;
  }
  return 0;
}

/* Parse what keep-alive mode needs from one complete request header. */
static struct request parse_request(const char *header, size_t len) {
  struct request req = {0};
  const char *line_end = memchr(header, '\n', len);
  size_t first_len = (size_t)(line_end - header); /* header contains "\n" by construction */
  if (first_len > 0 && header[first_len - 1] == '\r') first_len--;
  req.is_head = first_len >= 5 && memcmp(header, "HEAD ", 5) == 0;
  int http_1_1 = first_len >= 9 && memcmp(header + first_len - 9, " HTTP/1.1", 9) == 0;
  req.http_1_0 = !http_1_1;
  int conn_close = 0, conn_keep_alive = 0, chunked = 0;

  size_t pos = (size_t)(line_end - header) + 1;
  while (pos < len) {
    const char *nl = memchr(header + pos, '\n', len - pos);
    size_t end = nl ? (size_t)(nl - header) : len;
    const char *line = header + pos;
    size_t line_len = end - pos;
    if (line_len > 0 && line[line_len - 1] == '\r') line_len--;
    const char *colon = memchr(line, ':', line_len);
    if (colon) {
      size_t name_len = (size_t)(colon - line);
      const char *value = colon + 1;
      size_t value_len = line_len - name_len - 1;
      if (name_len == 10 && strncasecmp(line, "Connection", 10) == 0) {
        conn_close |= has_token(value, value_len, "close");
        conn_keep_alive |= has_token(value, value_len, "keep-alive");
      } else if (name_len == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
        char number[24] = {0};
        memcpy(number, value, value_len < sizeof number - 1 ? value_len : sizeof number - 1);
        req.body_length = (size_t)strtoull(number, NULL, 10);
      } else if (name_len == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0) {
        chunked = 1; /* no chunked parser here: answer, then close */
      }
    }
    pos = end + 1;
  }
  req.keep_alive = http_1_1 ? !conn_close : conn_keep_alive;
  if (chunked) req.keep_alive = 0;
  return req;
}

/* Responses to one batch of pipelined requests, sent with one ep_send (one syscall, and no
 * small second write meeting Nagle's algorithm). */
struct batch {
  char bytes[16384];
  size_t len;
};

/* Sends what the batch holds; returns ep_send's result (0 when empty). */
static int send_batch(ep_loop *loop, ep_id conn, struct batch *out) {
  int rc = out->len ? ep_send(loop, conn, out->bytes, out->len) : 0;
  out->len = 0;
  return rc;
}

/* Appends one response, sending the batch first if it would not fit. */
static int add_response(ep_loop *loop, ep_id conn, struct batch *out, const char *bytes, size_t n) {
  int rc = 0;
  if (out->len + n > sizeof out->bytes) rc = send_batch(loop, conn, out);
  if (rc < 0) return rc;
  memcpy(out->bytes + out->len, bytes, n);
  out->len += n;
  return rc;
}

static int add_keep_alive_response(ep_loop *loop, ep_id conn, struct batch *out,
                                   const struct request *req) {
  char response[256];
  const char *connection = !req->keep_alive ? "Connection: close\r\n"
                           : req->http_1_0  ? "Connection: keep-alive\r\n"
                                            : "";
  int n = snprintf(response, sizeof response,
                   "HTTP/1.1 200 OK\r\n"
                   "Date: Mon, 1 Jan 1996 01:01:01 GMT\r\n"
                   "Content-Type: text/plain\r\n"
                   "Content-Length: %zu\r\n"
                   "%s\r\n"
                   "%s",
                   sizeof BODY - 1, connection, req->is_head ? "" : BODY);
  return add_response(loop, conn, out, response, (size_t)n);
}

/* Opens DIR/NAME for the request line "GET /NAME ..." (or HEAD); -1 if there is no such plain
 * file. NAME must be a plain name: no "/" or ".." (nothing outside DIR is served). */
static int open_requested_file(const char *header, size_t len, struct stat *st) {
  const char *line_end = memchr(header, '\n', len);
  size_t n = (size_t)(line_end - header);
  const char *path = NULL;
  if (n > 5 && memcmp(header, "GET /", 5) == 0) path = header + 5;
  if (n > 6 && memcmp(header, "HEAD /", 6) == 0) path = header + 6;
  if (path == NULL) return -1;
  const char *space = memchr(path, ' ', (size_t)(line_end - path));
  size_t name_len = space ? (size_t)(space - path) : 0;
  char name[256];
  if (name_len == 0 || name_len >= sizeof name) return -1;
  memcpy(name, path, name_len);
  name[name_len] = '\0';
  if (strchr(name, '/') || strstr(name, "..")) return -1;
  char full[4096];
  if (snprintf(full, sizeof full, "%s/%s", g_opt.root, name) >= (int)sizeof full) return -1;
  int fd = open(full, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
    close(fd);
    return -1;
  }
  return fd;
}

/* --root mode: the file's header goes into the batch; the batch is then sent and the file queued
 * behind it with ep_send_file, so the bytes leave in order. Returns the last send's result. */
static int add_file_response(ep_loop *loop, ep_id conn, struct batch *out, const char *header,
                             size_t header_len, const struct request *req) {
  struct stat st;
  int fd = open_requested_file(header, header_len, &st);
  const char *connection = !req->keep_alive ? "Connection: close\r\n"
                           : req->http_1_0  ? "Connection: keep-alive\r\n"
                                            : "";
  char head[256];
  int n;
  if (fd < 0) {
    n = snprintf(head, sizeof head,
                 "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                 "Content-Length: 10\r\n%s\r\n%s",
                 connection, req->is_head ? "" : "not found\n");
    return add_response(loop, conn, out, head, (size_t)n);
  }
  n = snprintf(head, sizeof head,
               "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
               "Content-Length: %jd\r\n%s\r\n",
               (intmax_t)st.st_size, connection);
  int rc = add_response(loop, conn, out, head, (size_t)n);
  if (rc >= 0 && !req->is_head && st.st_size > 0) {
    rc = send_batch(loop, conn, out);
    /* The loop sends from its own duplicate: our descriptor is closed right away. */
    if (rc >= 0) rc = ep_send_file(loop, conn, fd, 0, (uint64_t)st.st_size);
  }
  close(fd);
  return rc;
}

/* Handles ep_send's result; returns 0 to go on, -1 when the connection is done for. */
static int check_send(ep_loop *loop, ep_id conn, struct conn *c, int rc) {
  if (rc < 0) { /* our own mistake (a peer's departure is reported by on_close alone) */
    c->closing = 1;
    report(conn, "ep_send", rc);
    ep_abort(loop, conn);
    return -1;
  }
  if (rc == 1) {
    /* A pipelining client that does not read: stop reading until the queue drains. */
    rc = ep_pause_reading(loop, conn);
    if (rc < 0) report(conn, "ep_pause_reading", rc);
  }
  return 0;
}

/* Answer every complete request in c->buf, in order. */
static void serve_requests(ep_loop *loop, ep_id conn, struct conn *c) {
  int corked = 0, last = 0;
  size_t header_len;
  struct batch out;
  out.len = 0;
  while (!last && c->body_left == 0 && (header_len = header_length(c->buf, c->len)) > 0) {
    if (!g_opt.quiet) print_request(c->buf, header_len);
    if (g_opt.cork && !corked) {
      set_tcp_option(loop, conn, TCP_CORK, 1);
      corked = 1;
    }
    int rc;
    if (g_opt.root) {
      struct request req = parse_request(c->buf, header_len);
      if (!g_opt.keep_alive) req.keep_alive = 0;
      last = !req.keep_alive;
      c->body_left = req.body_length;
      rc = add_file_response(loop, conn, &out, c->buf, header_len, &req);
    } else if (g_opt.keep_alive) {
      struct request req = parse_request(c->buf, header_len);
      last = !req.keep_alive;
      c->body_left = req.body_length;
      rc = add_keep_alive_response(loop, conn, &out, &req);
    } else {
      last = 1;
      rc = add_response(loop, conn, &out, RESPONSE_1_0, sizeof RESPONSE_1_0 - 1);
    }
    if (check_send(loop, conn, c, rc) < 0) return;
    memmove(c->buf, c->buf + header_len, c->len - header_len);
    c->len -= header_len;
    size_t skip = c->body_left < c->len ? c->body_left : c->len;
    memmove(c->buf, c->buf + skip, c->len - skip);
    c->len -= skip;
    c->body_left -= skip;
  }
  if (check_send(loop, conn, c, send_batch(loop, conn, &out)) < 0) return;
  if (corked) set_tcp_option(loop, conn, TCP_CORK, 0); /* uncork: push the batch out now */
  if (last) finish(loop, conn, c); /* after uncorking: the fd is not ours after ep_close */
}

static void on_accept(ep_loop *loop, ep_id listener, ep_id conn, void *user) {
  (void)listener;
  (void)user;
  if (!g_opt.quiet) log_accept(loop, conn, conn);
  if (g_opt.nodelay) set_tcp_option(loop, conn, TCP_NODELAY, 1);
  struct conn *c = calloc(1, sizeof *c);
  int rc = c ? ep_set_user(loop, conn, c) : -ENOMEM;
  if (rc < 0) {
    report(conn, "ep_set_user", rc);
    free(c);
    ep_abort(loop, conn);
  }
}

static void on_data(ep_loop *loop, ep_id conn, const uint8_t *data, size_t len, void *user) {
  struct conn *c = user;
  if (c == NULL) return;
  while (len > 0 && !c->closing) {
    if (c->body_left > 0) { /* skip a request body in keep-alive mode */
      size_t skip = len < c->body_left ? len : c->body_left;
      c->body_left -= skip;
      data += skip;
      len -= skip;
      continue;
    }
    size_t room = sizeof c->buf - c->len;
    size_t n = len < room ? len : room;
    memcpy(c->buf + c->len, data, n);
    c->len += n;
    data += n;
    len -= n;
    serve_requests(loop, conn, c);
    if (!c->closing && c->len == sizeof c->buf) {
      fprintf(stderr, "http_server: connection %" PRIu64 ": request header over %d bytes\n", conn,
              MAX_REQUEST_HEADER);
      finish(loop, conn, c);
    }
  }
}

static void on_writable(ep_loop *loop, ep_id conn, void *user) {
  struct conn *c = user;
  if (c == NULL || c->closing) return;
  int rc = ep_resume_reading(loop, conn);
  if (rc < 0) report(conn, "ep_resume_reading", rc);
}

static void on_close(ep_loop *loop, ep_id id, ep_close_reason reason, int err, void *user) {
  (void)loop;
  if (id == g_listener) return; /* the listener goes away with the loop; not a connection */
  if (!g_opt.quiet) log_close(id, reason, err);
  free(user);
}

/* SIGINT/SIGTERM come as ordinary callbacks on the loop's thread (never in a signal handler),
 * so anything may be done here. EP_UNREF: the handles keep nothing alive by themselves. */
static void on_signal(ep_loop *loop, ep_id handle, int signo, void *user) {
  (void)handle;
  (void)signo;
  (void)user;
  ep_stop(loop); /* ep_run returns EP_RUN_STOPPED */
}

static int watch_stop_signals(ep_loop *loop) {
  int64_t rc = ep_signal_start(loop, SIGINT, EP_UNREF, on_signal, NULL);
  if (rc > 0) rc = ep_signal_start(loop, SIGTERM, EP_UNREF, on_signal, NULL);
  return rc < 0 ? (int)rc : 0;
}

static int parse_uint(const char *text, unsigned long max, unsigned long *out) {
  char *end;
  errno = 0;
  unsigned long value = strtoul(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value > max || text[0] == '-') return -1;
  *out = value;
  return 0;
}

static int usage(void) {
  fprintf(stderr, "usage: http_server PORT [-q] [--host ADDR] [--edge] [--cork] [--nodelay]"
                  " [--backlog N] [--keep-alive] [--root DIR]\n");
  return 2;
}

int main(int argc, char **argv) {
  unsigned long port, backlog;
  if (argc < 2 || parse_uint(argv[1], 65535, &port) != 0) return usage();
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "-q") == 0) g_opt.quiet = 1;
    else if (strcmp(argv[i], "--edge") == 0) g_opt.edge = 1;
    else if (strcmp(argv[i], "--cork") == 0) g_opt.cork = 1;
    else if (strcmp(argv[i], "--nodelay") == 0) g_opt.nodelay = 1;
    else if (strcmp(argv[i], "--keep-alive") == 0) g_opt.keep_alive = 1;
    else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) g_opt.host = argv[++i];
    else if (strcmp(argv[i], "--root") == 0 && i + 1 < argc) g_opt.root = argv[++i];
    else if (strcmp(argv[i], "--backlog") == 0 && i + 1 < argc &&
             parse_uint(argv[i + 1], 1000000, &backlog) == 0) {
      g_opt.backlog = (int)backlog;
      i++;
    } else return usage();
  }
  setvbuf(stdout, NULL, _IOLBF, 0);

  ep_loop *loop = ep_loop_new();
  if (loop == NULL) {
    fprintf(stderr, "http_server: ep_loop_new failed\n");
    return 1;
  }
  const ep_callbacks callbacks = {
      .on_accept = on_accept, .on_data = on_data, .on_writable = on_writable, .on_close = on_close};
  int64_t listener = ep_listen(loop, g_opt.host, (uint16_t)port, g_opt.backlog,
                               g_opt.edge ? EP_EDGE : 0, &callbacks, NULL);
  if (listener < 0) {
    fprintf(stderr, "http_server: listen on %s:%lu: %s\n", g_opt.host, port,
            ep_strerror((int)listener));
    ep_loop_free(loop);
    return 1;
  }
  g_listener = (ep_id)listener;
  int bound_port = ep_local_port(loop, g_listener);
  if (bound_port < 0) {
    fprintf(stderr, "http_server: ep_local_port: %s\n", ep_strerror(bound_port));
    ep_loop_free(loop);
    return 1;
  }
  printf("listening %d\n", bound_port);

  int rc = watch_stop_signals(loop);
  if (rc < 0) {
    fprintf(stderr, "http_server: ep_signal_start: %s\n", ep_strerror(rc));
    ep_loop_free(loop);
    return 1;
  }
  do {
    rc = ep_run(loop);
  } while (rc == -EINTR);
  if (rc < 0) fprintf(stderr, "http_server: ep_run: %s\n", ep_strerror(rc));

  ep_loop_free(loop); /* logs "close <id> loop_freed 0" and frees every open connection */
  return rc < 0 ? 1 : 0;
}
