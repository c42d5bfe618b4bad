/* Allocates and touches 1 MiB chunks until malloc fails, then reports how
 * far it got and exits 3: the host's memory limit must stop it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK (1024 * 1024)

/* Chunks are chained through their first word and the chain's head is kept
 * in a volatile, so the compiler cannot elide the allocations. */
static void *volatile head;

int main(void) {
    /* wasm32 cannot address more than 4 GiB, so this bound is never the
     * reason the loop ends. */
    for (int mib = 0; mib < 8192; mib++) {
        char *p = malloc(CHUNK);
        if (p == NULL) {
            printf("malloc failed after %d MiB\n", mib);
            return 3;
        }
        memset(p, 0xa5, CHUNK);
        *(void **)p = head;
        head = p;
    }
    printf("allocated everything, no limit in force\n");
    return 0;
}
