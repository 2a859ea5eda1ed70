/* tiny_echo: a complete eploop echo server. Usage: tiny_echo PORT (0 = any free port). */
#include <eploop.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
static void stop(ep_loop *l, ep_id s, int n, void *u) { (void)s, (void)n, (void)u; ep_stop(l); }
static void on_writable(ep_loop *l, ep_id c, void *u) { (void)u; ep_resume_reading(l, c); }
static void on_data(ep_loop *l, ep_id c, const uint8_t *data, size_t len, void *u) {
  (void)u;
  int rc = ep_send(l, c, data, len);        /* copies; 1 = queue above its high-water mark */
  if (rc == 1) rc = ep_pause_reading(l, c); /* until on_writable: the peer reads again */
  if (rc < 0) ep_abort(l, c);
}
int main(int argc, char **argv) {
  ep_callbacks cbs = {.on_data = on_data, .on_writable = on_writable};
  ep_loop *loop = ep_loop_new(); /* NULL here makes ep_listen fail with EP_ENULL */
  int64_t id = ep_listen(loop, "127.0.0.1", atoi(argc > 1 ? argv[1] : "0"), 0, 0, &cbs, 0);
  if (id < 0) { fprintf(stderr, "tiny_echo: %s\n", ep_strerror((int)id)); return 1; }
  dprintf(1, "listening %d\n", ep_local_port(loop, (ep_id)id));
  ep_signal_start(loop, SIGINT, EP_UNREF, stop, 0); /* stop() runs on the loop's thread */
  ep_signal_start(loop, SIGTERM, EP_UNREF, stop, 0); /* EP_UNREF: keeps nothing alive */
  int rc = ep_run(loop);
  ep_loop_free(loop); /* closes whatever is still open */
  return rc < 0;
}
