/*
 * kv_server — a pipelined request/response server with backpressure it does not write itself.
 *
 * usage: kv_server PORT [-q] [--edge] [--no-auto-pause] [--value-size N]
 *   Each request line "GET <key>\n" is answered with "<key> <N>\n" followed by an N-byte value
 *   (default 1 MiB), sent without a copy (ep_send_nocopy of one static buffer).
 *
 * The pattern (README, "Backpressure for request/response servers"): the listener is registered
 * with EP_AUTO_PAUSE, so a connection stops reading while its send queue is above the high-water
 * mark and resumes below the low one. The server parses requests until ep_send says "stop
 * producing" (1), keeps the rest of its input, and goes on from on_writable. Against a client
 * that pipelines requests and never reads, the server therefore holds at most about one read of
 * input and one reply: memory stays bounded. --no-auto-pause shows the difference (input piles
 * up in the application buffer as fast as the client sends).
 *
 * stdout, line-buffered: listening / accept / close lines (the event log, see the README), then
 * "held <bytes>" once at exit: the largest input any connection kept unparsed.
 */
#include <eploop.h>

#include "eventlog.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct {
  int quiet, edge, auto_pause;
  size_t value_size;
} g_opt = {.auto_pause = 1, .value_size = 1 << 20};

static char *g_value;      /* the one value every key maps to, never freed while serving */
static ep_loop *g_loop;    /* for the signal handler */
static ep_id g_listener;
static size_t g_max_held;  /* the most input a connection kept unparsed */

struct conn {
  int stopped; /* ep_send said "stop producing": wait for on_writable */
  size_t len, cap;
  char *in; /* input not parsed yet */
};

static void report(ep_id conn, const char *what, int rc) {
  fprintf(stderr, "kv_server: connection %" PRIu64 ": %s: %s\n", conn, what, ep_strerror(rc));
}

/* Answers complete requests until the queue is full; the rest waits in c->in. */
static void serve(ep_loop *loop, ep_id conn, struct conn *c) {
  size_t used = 0;
  while (!c->stopped) {
    char *nl = memchr(c->in + used, '\n', c->len - used);
    if (nl == NULL) break;
    char *line = c->in + used;
    size_t line_len = (size_t)(nl - line);
    used += line_len + 1;
    if (line_len < 4 || memcmp(line, "GET ", 4) != 0) continue;
    char head[300];
    int n = snprintf(head, sizeof head, "%.*s %zu\n", (int)(line_len - 4 > 256 ? 256 : line_len - 4),
                     line + 4, g_opt.value_size);
    int rc = ep_send(loop, conn, head, (size_t)n);
    /* A static buffer: no release callback needed (it outlives the loop). */
    if (rc >= 0) rc = ep_send_nocopy(loop, conn, g_value, g_opt.value_size, NULL, NULL);
    if (rc < 0) {
      report(conn, "send", rc);
      ep_abort(loop, conn);
      return;
    }
    c->stopped = rc == 1;
  }
  memmove(c->in, c->in + used, c->len - used);
  c->len -= used;
}

static void on_accept(ep_loop *loop, ep_id listener, ep_id conn, void *user) {
  (void)listener;
  (void)user;
  if (!g_opt.quiet) log_accept(loop, conn, conn);
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
  if (c->len + len > c->cap) {
    size_t cap = (c->len + len) * 2;
    char *in = realloc(c->in, cap);
    if (in == NULL) {
      report(conn, "realloc", -ENOMEM);
      ep_abort(loop, conn);
      return;
    }
    c->in = in;
    c->cap = cap;
  }
  memcpy(c->in + c->len, data, len);
  c->len += len;
  if (c->len > g_max_held) g_max_held = c->len;
  serve(loop, conn, c);
}

static void on_writable(ep_loop *loop, ep_id conn, void *user) {
  struct conn *c = user;
  if (c == NULL) return;
  c->stopped = 0;
  serve(loop, conn, c);
}

static void on_close(ep_loop *loop, ep_id id, ep_close_reason reason, int err, void *user) {
  (void)loop;
  if (id == g_listener) return;
  if (!g_opt.quiet) log_close(id, reason, err);
  struct conn *c = user;
  if (c) free(c->in);
  free(c);
}

static void on_signal(int signo) {
  (void)signo;
  ep_stop(g_loop);
}

static void set_stop_signals(void (*handler)(int)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

static int usage(void) {
  fprintf(stderr, "usage: kv_server PORT [-q] [--edge] [--no-auto-pause] [--value-size N]\n");
  return 2;
}

int main(int argc, char **argv) {
  if (argc < 2) return usage();
  char *end;
  unsigned long port = strtoul(argv[1], &end, 10);
  if (*end != '\0' || port > 65535) return usage();
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "-q") == 0) g_opt.quiet = 1;
    else if (strcmp(argv[i], "--edge") == 0) g_opt.edge = 1;
    else if (strcmp(argv[i], "--no-auto-pause") == 0) g_opt.auto_pause = 0;
    else if (strcmp(argv[i], "--value-size") == 0 && i + 1 < argc) {
      g_opt.value_size = strtoul(argv[++i], &end, 10);
      if (*end != '\0' || g_opt.value_size == 0) return usage();
    } else return usage();
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  g_value = malloc(g_opt.value_size);
  if (g_value == NULL) return 1;
  memset(g_value, 'v', g_opt.value_size);

  ep_loop *loop = ep_loop_new();
  if (loop == NULL) return 1;
  const ep_callbacks callbacks = {
      .on_accept = on_accept, .on_data = on_data, .on_writable = on_writable, .on_close = on_close};
  uint32_t flags = (g_opt.edge ? EP_EDGE : 0) | (g_opt.auto_pause ? EP_AUTO_PAUSE : 0);
  int64_t listener = ep_listen(loop, "127.0.0.1", (uint16_t)port, 0, flags, &callbacks, NULL);
  if (listener < 0) {
    fprintf(stderr, "kv_server: listen: %s\n", ep_strerror((int)listener));
    ep_loop_free(loop);
    return 1;
  }
  g_listener = (ep_id)listener;
  printf("listening %d\n", ep_local_port(loop, g_listener));

  g_loop = loop;
  set_stop_signals(on_signal);
  int rc;
  do {
    rc = ep_run(loop);
  } while (rc == -EINTR);
  set_stop_signals(SIG_IGN);
  ep_loop_free(loop); /* every queued value is let go (no release callback: static) */
  printf("held %zu\n", g_max_held);
  free(g_value);
  return rc < 0 ? 1 : 0;
}
