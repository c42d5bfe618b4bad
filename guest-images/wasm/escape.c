/* Tries to read files outside its scratch directory by several routes and
 * reports each attempt. Exits 0 only if every attempt was denied. */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

static int escaped = 0;

/* Reports whether `path` could be opened and read. */
static void attempt(const char *what, const char *path) {
    int fd = open(path, O_RDONLY);
    char buf[64];
    if (fd >= 0 && read(fd, buf, sizeof buf) > 0) {
        printf("ESCAPED %s (%s)\n", what, path);
        escaped = 1;
    } else {
        printf("denied %s (%s)\n", what, path);
    }
    if (fd >= 0) {
        close(fd);
    }
}

int main(void) {
    attempt("dot-dot", "../etc/passwd");
    attempt("absolute", "/etc/passwd");
    attempt("absolute-proc", "/proc/self/status");
    attempt("scratch-dot-dot", "/scratch/../../../../etc/passwd");

    if (symlink("/etc/passwd", "/scratch/abs-link") == 0) {
        attempt("absolute-symlink", "/scratch/abs-link");
    } else {
        printf("denied absolute-symlink (creation refused)\n");
    }
    if (symlink("../../../../../../etc/passwd", "/scratch/rel-link") == 0) {
        attempt("relative-symlink", "/scratch/rel-link");
    } else {
        printf("denied relative-symlink (creation refused)\n");
    }
    return escaped;
}
