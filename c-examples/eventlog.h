/* eventlog.h: the event log every eploop example prints (see the README), one line per
 * lifecycle event, so tests and tools can follow any example:
 *
 *   listening <port>
 *   accept <id> <peer-ip>:<peer-port>
 *   close <id> <reason> <errno>
 */
#ifndef EPLOOP_EXAMPLE_EVENTLOG_H
#define EPLOOP_EXAMPLE_EVENTLOG_H

#include <arpa/inet.h>
#include <eploop.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/socket.h>

/* "accept <number> <peer-ip>:<peer-port>"; the peer comes from the connection's fd. */
static inline void log_accept(ep_loop *loop, ep_id conn, uint64_t number) {
  char ip[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  struct sockaddr_storage peer;
  socklen_t peer_len = sizeof peer;
  int fd = ep_fd(loop, conn);
  if (fd >= 0 && getpeername(fd, (struct sockaddr *)&peer, &peer_len) == 0) {
    if (peer.ss_family == AF_INET) {
      const struct sockaddr_in *sin = (const struct sockaddr_in *)&peer;
      inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
      port = ntohs(sin->sin_port);
    } else if (peer.ss_family == AF_INET6) {
      const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&peer;
      inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
      port = ntohs(sin6->sin6_port);
    }
  }
  printf("accept %" PRIu64 " %s:%u\n", number, ip, port);
}

/* "close <number> <reason> <errno>" with the library's name for the reason. */
static inline void log_close(uint64_t number, ep_close_reason reason, int err) {
  printf("close %" PRIu64 " %s %d\n", number, ep_close_reason_name((int)reason), err);
}

#endif
