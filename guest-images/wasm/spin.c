/* Announces itself, then loops forever: the host must end it by its CPU or
 * wall-clock limit, and the announcement must reach the host while it spins. */
#include <stdio.h>

int main(void) {
    volatile unsigned long counter = 0;
    printf("spinning\n");
    fflush(stdout);
    for (;;) {
        counter++;
    }
}
