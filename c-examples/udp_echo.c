/* udp_echo: a UDP echo server on eploop. Every datagram goes back to its sender, whole.
 *
 * usage: udp_echo PORT [-q] [--host ADDR]   (PORT 0 picks a free one; ADDR default 127.0.0.1,
 *                                             "" = every IPv6 and IPv4 address)
 *
 * Prints "listening <port>", then one line per datagram ("datagram <addr> <port> <len>",
 * "truncated" appended if it was cut) and per network error ("error <errno text>") unless -q,
 * and "close <id> <reason> <errno>" when the endpoint ends. SIGINT/SIGTERM stop it.
 *
 * Flow control as for streams: ep_sendto() returning 1 means the send queue is above its
 * high-water mark, so the server stops reading until on_writable. The network's answers
 * (unreachable, refused) come to on_error; they never end the endpoint or fail a call. */
#include <arpa/inet.h>
#include <eploop.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int quiet;

static void stop(ep_loop *lp, ep_id sig, int signo, void *user) {
  (void)sig, (void)signo, (void)user;
  ep_stop(lp);
}

/* "addr port" of an IPv4 or IPv6 sender. */
static void format_addr(const struct sockaddr *sa, char *out, size_t len) {
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    port = ntohs(in6->sin6_port);
  }
  snprintf(out, len, "%s %d", host, port);
}

static void on_datagram(ep_loop *lp, ep_id id, const uint8_t *data, size_t len,
                        const struct sockaddr *from, socklen_t fromlen, uint32_t flags,
                        void *user) {
  (void)user;
  if (!quiet) {
    char who[INET6_ADDRSTRLEN + 8];
    format_addr(from, who, sizeof who);
    printf("datagram %s %zu%s\n", who, len, flags & EP_DGRAM_TRUNCATED ? " truncated" : "");
  }
  /* Copied; 1 = the queue is above its high-water mark: stop reading until on_writable. */
  if (ep_sendto(lp, id, data, len, from, fromlen) == 1) ep_pause_reading(lp, id);
}

static void on_writable(ep_loop *lp, ep_id id, void *user) {
  (void)user;
  ep_resume_reading(lp, id);
}

static void on_error(ep_loop *lp, ep_id id, int err, void *user) {
  (void)lp, (void)id, (void)user;
  if (!quiet) printf("error %s\n", strerror(err));
}

static void on_close(ep_loop *lp, ep_id id, ep_close_reason reason, int err, void *user) {
  (void)lp, (void)user;
  printf("close %llu %s %d\n", (unsigned long long)id, ep_close_reason_name((int)reason), err);
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  int port = -1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-q") == 0) quiet = 1;
    else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) host = argv[++i];
    else if (port < 0) port = atoi(argv[i]);
    else {
      fprintf(stderr, "usage: udp_echo PORT [-q] [--host ADDR]\n");
      return 2;
    }
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  ep_datagram_callbacks cbs = {
      .on_datagram = on_datagram, .on_writable = on_writable,
      .on_error = on_error, .on_close = on_close};
  ep_loop *loop = ep_loop_new();
  int64_t id = ep_udp_bind(loop, host, (uint16_t)(port < 0 ? 0 : port), 0, &cbs, NULL);
  if (id < 0) {
    fprintf(stderr, "udp_echo: %s\n", ep_strerror((int)id));
    ep_loop_free(loop);
    return 1;
  }
  printf("listening %d\n", ep_local_port(loop, (ep_id)id));
  ep_signal_start(loop, SIGINT, EP_UNREF, stop, NULL);
  ep_signal_start(loop, SIGTERM, EP_UNREF, stop, NULL);
  int rc = ep_run(loop);
  ep_loop_free(loop); /* on_close(loop_freed) */
  return rc < 0;
}
