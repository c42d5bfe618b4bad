/* Works (burns CPU) for argv[1] seconds of wall-clock time, then says done:
 * a job long enough to lose its seller halfway through. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 5;
    volatile unsigned long counter = 0;
    printf("working for %.1f s\n", secs);
    fflush(stdout);
    double end = now() + secs;
    while (now() < end) {
        for (int i = 0; i < 100000; i++) {
            counter++;
        }
    }
    printf("done\n");
    return 0;
}
