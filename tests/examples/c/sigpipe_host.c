/*
 * sigpipe_host — a C host that leaves SIGPIPE at its default action (terminate) and has output
 * queued when its peer resets. eploop must write with MSG_NOSIGNAL, so the host survives, sees
 * exactly one on_close(EP_CLOSE_PEER_RESET) for the connection, and exits 0.
 *
 * Driven by tests/examples/test_example_sigpipe.py:
 *   stdout: "listening <port>", then "queued <bytes> <last ep_send result>" once the client is
 *   accepted, then "close <id> <reason> <errno>", then "result ok" (exit 0) or "result ..." (1).
 * The client connects, never reads, waits for "queued", then closes with SO_LINGER {1, 0} (RST).
 */
#include <eploop.h>

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define CHUNKS 256 /* 16 MiB: far beyond what the loopback socket buffers hold */

static ep_id g_listener, g_conn;
static int g_conn_closes, g_other_closes, g_reason, g_err, g_send_error;

static void on_accept(ep_loop *loop, ep_id listener, ep_id conn, void *user) {
  (void)listener;
  (void)user;
  static uint8_t chunk[CHUNK];
  if (g_conn != 0) {
    ep_abort(loop, conn); /* only one client expected */
    return;
  }
  g_conn = conn;
  memset(chunk, 'x', sizeof chunk);
  size_t queued = 0;
  int rc = 0;
  for (int i = 0; i < CHUNKS; i++) {
    rc = ep_send(loop, conn, chunk, sizeof chunk);
    if (rc < 0) {
      fprintf(stderr, "sigpipe_host: ep_send: %s\n", ep_strerror(rc));
      g_send_error = rc;
      return;
    }
    queued += sizeof chunk;
  }
  printf("queued %zu %d\n", queued, rc);
}

static const char *reason_name(int reason) {
  static const char *const names[] = {"?",     "peer_eof", "peer_reset", "error",
                                      "local", "abort",    "timeout",    "loop_freed"};
  return reason > 0 && reason < (int)(sizeof names / sizeof names[0]) ? names[reason] : "?";
}

static void on_close(ep_loop *loop, ep_id id, ep_close_reason reason, int err, void *user) {
  (void)user;
  if (id == g_listener) return;
  if (id != g_conn) {
    g_other_closes++;
    return;
  }
  g_conn_closes++;
  g_reason = (int)reason;
  g_err = err;
  printf("close %" PRIu64 " %s %d\n", id, reason_name((int)reason), err);
  ep_stop(loop);
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_DFL);
  sigset_t pipe_only;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  sigprocmask(SIG_UNBLOCK, &pipe_only, NULL);
  alarm(20); /* a hung loop dies by SIGALRM instead of hanging the test */

  ep_loop *loop = ep_loop_new();
  if (loop == NULL) return 1;
  const ep_callbacks callbacks = {.on_accept = on_accept, .on_close = on_close};
  int64_t listener = ep_listen(loop, "127.0.0.1", 0, 0, 0, &callbacks, NULL);
  if (listener < 0) {
    fprintf(stderr, "sigpipe_host: ep_listen: %s\n", ep_strerror((int)listener));
    return 1;
  }
  g_listener = (ep_id)listener;
  printf("listening %d\n", ep_local_port(loop, g_listener));

  int rc = ep_run(loop);
  /* Give a duplicate or late on_close for the connection every chance to show up. */
  for (int i = 0; i < 5 && rc >= 0; i++) rc = ep_run_once(loop, 20);
  ep_loop_free(loop);

  int ok = rc >= 0 && g_send_error == 0 && g_conn_closes == 1 && g_other_closes == 0 &&
           g_reason == EP_CLOSE_PEER_RESET;
  if (ok) {
    printf("result ok\n");
    return 0;
  }
  printf("result fail: run=%d send_error=%d closes=%d other_closes=%d reason=%d err=%d\n", rc,
         g_send_error, g_conn_closes, g_other_closes, g_reason, g_err);
  return 1;
}
