/*
 * multi_loop — one event loop per thread, all listening on one port with EP_REUSEPORT: the
 * kernel spreads incoming connections over the loops, so an echo server uses every core.
 *
 * usage: multi_loop PORT [-q] [--threads N] [--host ADDR]
 *   PORT         TCP port; 0 picks a free one (printed once on the "listening" line)
 *   -q           quiet: print only the "listening" line
 *   --threads N  number of loops/threads (default: the number of online CPUs)
 *   --host ADDR  address to bind (default 127.0.0.1)
 *
 * stdout, line-buffered (the event log, see the README):
 *   listening <port>
 *   accept <id> <peer-ip>:<peer-port>
 *   close <id> <reason> <errno>
 * Ids are eploop ids, which are unique per loop only; this program numbers its connections
 * process-wide instead (1, 2, ...), so every accept line pairs with exactly one close line.
 *
 * Threads: every loop is created, and its listener bound, by the main thread; each worker then
 * runs one loop and nothing else (a loop belongs to the thread that runs it). SIGINT/SIGTERM are
 * blocked in every thread (before any is created: threads inherit the mask), so a signal sent to
 * the process waits for the one loop that watches it: the main thread's control loop, whose only
 * registrations are two ep_signal_start() handles. Their callback stops the control loop; the
 * main thread then calls ep_stop() on each worker's loop (ep_stop is thread-safe), joins the
 * workers, and frees the loops: open connections are logged "close <id> loop_freed 0".
 */
#include <eploop.h>

#include "eventlog.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_LOOPS 256

struct worker {
  ep_loop *loop;
  pthread_t thread;
  int rc; /* what ep_run returned */
};

static int g_quiet;
static atomic_uint_fast64_t g_next_conn = 1; /* process-wide connection numbers */

/* A connection's number travels as its user pointer; the listeners' user pointer is NULL. */
static uint64_t conn_number(void *user) { return (uint64_t)(uintptr_t)user; }

static void on_accept(ep_loop *loop, ep_id listener, ep_id conn, void *user) {
  (void)listener;
  (void)user;
  uint64_t number = atomic_fetch_add(&g_next_conn, 1);
  ep_set_user(loop, conn, (void *)(uintptr_t)number);
  if (!g_quiet) log_accept(loop, conn, number);
}

static void on_data(ep_loop *loop, ep_id conn, const uint8_t *data, size_t len, void *user) {
  int rc = ep_send(loop, conn, data, len);
  if (rc == 1) rc = ep_pause_reading(loop, conn); /* resumed in on_writable */
  if (rc < 0) { /* our own mistake (a peer's departure is reported by on_close alone) */
    fprintf(stderr, "multi_loop: connection %" PRIu64 ": %s\n", conn_number(user), ep_strerror(rc));
    ep_abort(loop, conn);
  }
}

static void on_writable(ep_loop *loop, ep_id conn, void *user) {
  int rc = ep_resume_reading(loop, conn);
  if (rc < 0) {
    fprintf(stderr, "multi_loop: connection %" PRIu64 ": %s\n", conn_number(user), ep_strerror(rc));
    ep_abort(loop, conn);
  }
}

static void on_close(ep_loop *loop, ep_id id, ep_close_reason reason, int err, void *user) {
  (void)loop;
  (void)id;
  if (user == NULL) return; /* a listener, going away with its loop: not a connection */
  if (!g_quiet) log_close(conn_number(user), reason, err);
}

static void *run_worker(void *arg) {
  struct worker *w = arg;
  w->rc = ep_run(w->loop);
  if (w->rc != EP_RUN_STOPPED) {
    /* This loop ended on its own (an error): take the whole server down with it. */
    fprintf(stderr, "multi_loop: ep_run: %s\n", w->rc < 0 ? ep_strerror(w->rc) : "nothing left");
    kill(getpid(), SIGTERM);
  }
  return NULL;
}

/* A stop signal: a callback on the control loop's thread, like any other. */
static void on_stop_signal(ep_loop *control, ep_id handle, int signo, void *user) {
  (void)handle;
  (void)signo;
  (void)user;
  ep_stop(control);
}

/* Runs until SIGINT or SIGTERM (the handles keep the control loop alive: no EP_UNREF). */
static int run_control_loop(void) {
  ep_loop *control = ep_loop_new();
  int64_t rc = ep_signal_start(control, SIGINT, 0, on_stop_signal, NULL);
  if (rc > 0) rc = ep_signal_start(control, SIGTERM, 0, on_stop_signal, NULL);
  if (rc > 0) rc = ep_run(control);
  if (rc < 0) fprintf(stderr, "multi_loop: control loop: %s\n", ep_strerror((int)rc));
  ep_loop_free(control); /* gives the main thread its signal mask back: still blocked */
  return rc < 0;
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
  fprintf(stderr, "usage: multi_loop PORT [-q] [--threads N] [--host ADDR]\n");
  return 2;
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  unsigned long port, nloops;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  nloops = cpus > 0 ? (unsigned long)cpus : 1;
  if (nloops > MAX_LOOPS) nloops = MAX_LOOPS;
  if (argc < 2 || parse_uint(argv[1], 65535, &port) != 0) return usage();
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "-q") == 0) g_quiet = 1;
    else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) host = argv[++i];
    else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      if (parse_uint(argv[++i], MAX_LOOPS, &nloops) != 0 || nloops == 0) return usage();
    } else return usage();
  }
  setvbuf(stdout, NULL, _IOLBF, 0);

  /* Blocked here, inherited by every worker: only the control loop below ever takes them. Were a
   * worker not to block them, a signal sent to the process could be delivered to it instead. */
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

  static struct worker workers[MAX_LOOPS];
  const ep_callbacks callbacks = {
      .on_accept = on_accept, .on_data = on_data, .on_writable = on_writable, .on_close = on_close};
  int status = 0;
  unsigned long created = 0;
  uint16_t bound_port = (uint16_t)port;
  for (; created < nloops; created++) {
    ep_loop *loop = ep_loop_new();
    if (loop == NULL) {
      fprintf(stderr, "multi_loop: ep_loop_new failed\n");
      status = 1;
      break;
    }
    workers[created].loop = loop;
    /* The first listener may pick the port (0); the others join it on the same one. */
    int64_t listener = ep_listen(loop, host, bound_port, 0, EP_REUSEPORT, &callbacks, NULL);
    if (listener < 0) {
      fprintf(stderr, "multi_loop: listen on %s:%u: %s\n", host, bound_port, ep_strerror((int)listener));
      status = 1;
      created++;
      break;
    }
    int local = ep_local_port(loop, (ep_id)listener);
    if (local < 0) {
      fprintf(stderr, "multi_loop: ep_local_port: %s\n", ep_strerror(local));
      status = 1;
      created++;
      break;
    }
    bound_port = (uint16_t)local;
  }

  unsigned long started = 0;
  if (status == 0) {
    printf("listening %u\n", bound_port);
    for (; started < created; started++) {
      int err = pthread_create(&workers[started].thread, NULL, run_worker, &workers[started]);
      if (err != 0) {
        fprintf(stderr, "multi_loop: pthread_create: %s\n", strerror(err));
        status = 1;
        break;
      }
    }
    if (status == 0) status = run_control_loop();
  }

  for (unsigned long i = 0; i < started; i++) ep_stop(workers[i].loop);
  for (unsigned long i = 0; i < started; i++) {
    pthread_join(workers[i].thread, NULL);
    if (workers[i].rc != EP_RUN_STOPPED) status = 1;
  }
  /* Every worker has returned: the loops are the main thread's now. */
  for (unsigned long i = 0; i < created; i++) ep_loop_free(workers[i].loop);
  return status;
}
