/* Reads /in/x (a read-only --share), writes /out/y and /out/sub/z (a
 * writable --share), then works for argv[1] seconds (default 0), so a
 * test can lose its seller after the outputs were written there. Tries
 * to write into /in and to escape /in, and says whether it could. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    char buf[256] = {0};
    FILE *in = fopen("/in/x", "r");
    if (!in) {
        perror("open /in/x");
        return 3;
    }
    size_t n = fread(buf, 1, sizeof buf - 1, in);
    fclose(in);
    FILE *ro = fopen("/in/new", "w");
    printf("write into /in: %s\n", ro ? "allowed" : "refused");
    if (ro) fclose(ro);
    FILE *up = fopen("/in/../in/x", "r");
    printf("escape from /in: %s\n", up ? "opened" : "refused");
    if (up) fclose(up);
    FILE *out = fopen("/out/y", "w");
    if (!out) {
        perror("open /out/y");
        return 4;
    }
    fprintf(out, "seen: %.*s", (int)n, buf);
    fclose(out);
    mkdir("/out/sub", 0755);
    FILE *z = fopen("/out/sub/z", "w");
    if (!z) {
        perror("open /out/sub/z");
        return 5;
    }
    fputs("deep\n", z);
    fclose(z);
    printf("outputs written\n");
    fflush(stdout);
    double secs = argc > 1 ? atof(argv[1]) : 0;
    volatile unsigned long counter = 0;
    double end = now() + secs;
    while (now() < end) {
        for (int i = 0; i < 100000; i++) {
            counter++;
        }
    }
    printf("done\n");
    return 0;
}
