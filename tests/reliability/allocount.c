/* allocount.so: counts heap allocations (malloc, calloc, realloc, posix_memalign,
 * aligned_alloc) in the process it is preloaded into; on SIGUSR2 it writes the count so far, as
 * decimal text, to the file named by ALLOCOUNT_FILE (async-signal-safe: open/write/rename only).
 * test_rel_steady.py reads it before and after a steady-state window of traffic. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static atomic_ulong count;
static char path[512];
static char tmp[520];

void *malloc(size_t n) {
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size) {
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n) {
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return __libc_realloc(p, n);
}

int posix_memalign(void **out, size_t align, size_t n) {
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    void *p = __libc_memalign(align, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

void *aligned_alloc(size_t align, size_t n) {
    atomic_fetch_add_explicit(&count, 1, memory_order_relaxed);
    return __libc_memalign(align, n);
}

static void report(int signo) {
    (void)signo;
    int saved = errno;
    char text[32];
    size_t len = 0;
    unsigned long value = atomic_load(&count);
    char digits[32];
    do {
        digits[len++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    for (size_t i = 0; i < len; i++) text[i] = digits[len - 1 - i];
    text[len++] = '\n';
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
        ssize_t w = write(fd, text, len);
        (void)w;
        close(fd);
        rename(tmp, path); /* the reader never sees a half-written file */
    }
    errno = saved;
}

__attribute__((constructor)) static void setup(void) {
    const char *file = getenv("ALLOCOUNT_FILE");
    if (!file || strlen(file) >= sizeof path - 1) return;
    strcpy(path, file);
    strcpy(tmp, file);
    strcat(tmp, ".new");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = report;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
}
