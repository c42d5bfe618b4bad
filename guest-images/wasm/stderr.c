/* Writes to stdout and stderr in turn, flushing after each line, so the
 * host can check that the two streams arrive interleaved in order. */
#include <stdio.h>

int main(void) {
    for (int i = 0; i < 3; i++) {
        fprintf(stdout, "out %d\n", i);
        fflush(stdout);
        fprintf(stderr, "err %d\n", i);
        fflush(stderr);
    }
    return 0;
}
