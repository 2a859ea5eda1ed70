/*
 * echo_server — an echo server that does what the seed 000 script wanted: echo every byte back, and learn exactly once,
 * with a reason, that the telnet client has gone (instead of spinning on empty reads forever).
 *
 * usage: echo_server PORT [-q] [--host ADDR] [--trace]
 *   PORT         TCP port; 0 picks a free one (printed on the "listening" line)
 *   -q           quiet: print only the "listening" line, no per-connection lines
 *   --host ADDR  address to bind (default 127.0.0.1; "::" or "0.0.0.0" for every interface)
 *   --trace      print every decision the loop makes about a connection on stderr
 *                ("trace <id> ..." lines: epoll bits, reads, writes, FIN, the close and its cause)
 *
 * stdout, line-buffered (the event log, see the README):
 *   listening <port>
 *   accept <id> <peer-ip>:<peer-port>
 *   recv <id> <n> bytes
 *   close <id> <reason> <errno>
 * SIGINT/SIGTERM stop the loop; every open connection is then closed (close ... loop_freed 0)
 * and the process exits 0.
 *
 * Flow control: when a peer sends faster than it reads, ep_send() reports the queue above its
 * high-water mark; the server stops reading from that peer until on_writable says the queue
 * has drained, so memory stays bounded.
 */
#include <eploop.h>

#include "eventlog.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int g_quiet;

static void on_data(ep_loop *loop, ep_id conn, const uint8_t *data, size_t len, void *user);
static void on_writable(ep_loop *loop, ep_id conn, void *user);
static void on_close(ep_loop *loop, ep_id conn, ep_close_reason reason, int err, void *user);

/* A connection's own callbacks, given to it in on_accept: the listener keeps its own. */
static const ep_callbacks connection_callbacks = {
    .on_data = on_data, .on_writable = on_writable, .on_close = on_close};

static void on_accept(ep_loop *loop, ep_id listener, ep_id conn, void *user) {
  (void)listener;
  (void)user;
  ep_set_callbacks(loop, conn, &connection_callbacks, NULL);
  if (!g_quiet) log_accept(loop, conn, conn);
}

static void on_data(ep_loop *loop, ep_id conn, const uint8_t *data, size_t len, void *user) {
  (void)user;
  if (!g_quiet) printf("recv %" PRIu64 " %zu bytes\n", conn, len);
  int rc = ep_send(loop, conn, data, len);
  if (rc == 1) rc = ep_pause_reading(loop, conn); /* resumed in on_writable */
  if (rc < 0) { /* our own mistake (a peer's departure is reported by on_close alone) */
    fprintf(stderr, "echo_server: connection %" PRIu64 ": %s\n", conn, ep_strerror(rc));
    ep_abort(loop, conn);
  }
}

static void on_writable(ep_loop *loop, ep_id conn, void *user) {
  (void)user;
  int rc = ep_resume_reading(loop, conn);
  if (rc < 0) {
    fprintf(stderr, "echo_server: connection %" PRIu64 ": %s\n", conn, ep_strerror(rc));
    ep_abort(loop, conn);
  }
}

static void on_close(ep_loop *loop, ep_id conn, ep_close_reason reason, int err, void *user) {
  (void)loop;
  (void)user;
  if (!g_quiet) log_close(conn, reason, err);
}

/* --trace: why did the loop do what it did? One line per decision, on stderr. */
static void print_trace(ep_loop *loop, const ep_trace_record *record, void *user) {
  (void)loop;
  (void)user;
  char line[256];
  ep_trace_format(record, line, sizeof line);
  fprintf(stderr, "%s\n", line);
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

static int parse_port(const char *text, uint16_t *port) {
  char *end;
  errno = 0;
  unsigned long value = strtoul(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value > 65535 || text[0] == '-') return -1;
  *port = (uint16_t)value;
  return 0;
}

static int usage(void) {
  fprintf(stderr, "usage: echo_server PORT [-q] [--host ADDR] [--trace]\n");
  return 2;
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  int trace = 0;
  uint16_t port;
  if (argc < 2 || parse_port(argv[1], &port) != 0) return usage();
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "-q") == 0) g_quiet = 1;
    else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) host = argv[++i];
    else if (strcmp(argv[i], "--trace") == 0) trace = 1;
    else return usage();
  }
  setvbuf(stdout, NULL, _IOLBF, 0);

  ep_loop *loop = ep_loop_new();
  if (loop == NULL) {
    fprintf(stderr, "echo_server: ep_loop_new failed\n");
    return 1;
  }
  if (trace) ep_set_trace(loop, print_trace, NULL);
  const ep_callbacks listener_callbacks = {.on_accept = on_accept}; /* its close: not logged */
  int64_t listener = ep_listen(loop, host, port, 0, 0, &listener_callbacks, NULL);
  if (listener < 0) {
    fprintf(stderr, "echo_server: listen on %s:%u: %s\n", host, port, ep_strerror((int)listener));
    ep_loop_free(loop);
    return 1;
  }
  int bound_port = ep_local_port(loop, (ep_id)listener);
  if (bound_port < 0) {
    fprintf(stderr, "echo_server: ep_local_port: %s\n", ep_strerror(bound_port));
    ep_loop_free(loop);
    return 1;
  }
  printf("listening %d\n", bound_port);

  int rc = watch_stop_signals(loop);
  if (rc < 0) {
    fprintf(stderr, "echo_server: ep_signal_start: %s\n", ep_strerror(rc));
    ep_loop_free(loop);
    return 1;
  }
  do {
    rc = ep_run(loop);
  } while (rc == -EINTR);
  if (rc < 0) fprintf(stderr, "echo_server: ep_run: %s\n", ep_strerror(rc));

  ep_loop_free(loop); /* logs "close <id> loop_freed 0" for every connection still open */
  return rc < 0 ? 1 : 0;
}
