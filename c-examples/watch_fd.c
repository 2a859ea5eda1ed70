/*
 * watch_fd — the seed 002 idea: print what TCP clients send, and watch a non-socket fd too
 * (stdin by default: a pipe or a tty), printing what arrives on it and reporting its end like
 * any other connection: when the pipe's writer exits, "close <id> peer_eof 0".
 *
 * usage: watch_fd PORT [-q] [--host ADDR] [--fd N | --no-stdin]
 *   PORT         TCP port; 0 picks a free one (printed on the "listening" line)
 *   -q           quiet: print only the "listening" line
 *   --host ADDR  address to bind (default 127.0.0.1)
 *   --fd N       watch fd N (inherited from the parent) instead of stdin; the loop owns it
 *   --no-stdin   watch no extra fd
 *
 * stdout, line-buffered (the event log, see the README):
 *   listening <port>
 *   watching <id> fd <n>                 the extra fd is registered as <id>
 *   accept <id> <peer-ip>:<peer-port>
 *   data <id> "<bytes>"                  one line per chunk read, C-escaped (\n, \t, \xNN, ...)
 *   close <id> <reason> <errno>
 * SIGINT/SIGTERM stop the loop; everything still open is closed (close ... loop_freed 0); exit 0.
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

static ep_id g_listener;
static int g_quiet;

static void on_accept(ep_loop *loop, ep_id listener, ep_id conn, void *user) {
  (void)listener;
  (void)user;
  if (!g_quiet) log_accept(loop, conn, conn);
}

/* Same callback for sockets and the watched fd: eploop reads both the same way. */
static void on_data(ep_loop *loop, ep_id id, const uint8_t *data, size_t len, void *user) {
  (void)loop;
  (void)user;
  if (g_quiet) return;
  printf("data %" PRIu64 " \"", id);
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = data[i];
    switch (ch) {
    case '\n': fputs("\\n", stdout); break;
    case '\r': fputs("\\r", stdout); break;
    case '\t': fputs("\\t", stdout); break;
    case '\\': fputs("\\\\", stdout); break;
    case '"': fputs("\\\"", stdout); break;
    default:
      if (ch >= 0x20 && ch < 0x7f) putchar(ch);
      else printf("\\x%02x", ch);
    }
  }
  printf("\"\n");
}

static void on_close(ep_loop *loop, ep_id id, ep_close_reason reason, int err, void *user) {
  (void)loop;
  (void)user;
  if (id == g_listener) return; /* the listener goes away with the loop; not a connection */
  if (!g_quiet) log_close(id, reason, err);
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
  fprintf(stderr, "usage: watch_fd PORT [-q] [--host ADDR] [--fd N | --no-stdin]\n");
  return 2;
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  unsigned long port, fd_arg;
  int watched_fd = 0;
  if (argc < 2 || parse_uint(argv[1], 65535, &port) != 0) return usage();
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "-q") == 0) g_quiet = 1;
    else if (strcmp(argv[i], "--no-stdin") == 0) watched_fd = -1;
    else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) host = argv[++i];
    else if (strcmp(argv[i], "--fd") == 0 && i + 1 < argc &&
             parse_uint(argv[i + 1], 1 << 30, &fd_arg) == 0) {
      watched_fd = (int)fd_arg;
      i++;
    } else return usage();
  }
  setvbuf(stdout, NULL, _IOLBF, 0);

  ep_loop *loop = ep_loop_new();
  if (loop == NULL) {
    fprintf(stderr, "watch_fd: ep_loop_new failed\n");
    return 1;
  }
  const ep_callbacks callbacks = {.on_accept = on_accept, .on_data = on_data, .on_close = on_close};
  int64_t listener = ep_listen(loop, host, (uint16_t)port, 0, 0, &callbacks, NULL);
  if (listener < 0) {
    fprintf(stderr, "watch_fd: listen on %s:%lu: %s\n", host, port, ep_strerror((int)listener));
    ep_loop_free(loop);
    return 1;
  }
  g_listener = (ep_id)listener;
  int bound_port = ep_local_port(loop, g_listener);
  if (bound_port < 0) {
    fprintf(stderr, "watch_fd: ep_local_port: %s\n", ep_strerror(bound_port));
    ep_loop_free(loop);
    return 1;
  }
  printf("listening %d\n", bound_port);

  if (watched_fd >= 0) {
    /* stdin stays ours (EP_BORROW): fd 0 must not be closed and handed to the next accept. */
    uint32_t flags = watched_fd == 0 ? EP_BORROW : 0;
    int64_t watched = ep_register(loop, watched_fd, flags, &callbacks, NULL);
    if (watched < 0) {
      fprintf(stderr, "watch_fd: cannot watch fd %d: %s (try --fd N or --no-stdin)\n",
              watched_fd, ep_strerror((int)watched));
      ep_loop_free(loop);
      return 1;
    }
    if (!g_quiet) printf("watching %" PRIu64 " fd %d\n", (ep_id)watched, watched_fd);
  }

  int rc = watch_stop_signals(loop);
  if (rc < 0) {
    fprintf(stderr, "watch_fd: ep_signal_start: %s\n", ep_strerror(rc));
    ep_loop_free(loop);
    return 1;
  }
  do {
    rc = ep_run(loop);
  } while (rc == -EINTR);
  if (rc < 0) fprintf(stderr, "watch_fd: ep_run: %s\n", ep_strerror(rc));

  ep_loop_free(loop); /* logs "close <id> loop_freed 0" for everything still open */
  return rc < 0 ? 1 : 0;
}
