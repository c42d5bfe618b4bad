/* Executes `unreachable`: the host must report a trap, not an exit. */
#include <stdio.h>

int main(void) {
    printf("about to trap\n");
    fflush(stdout);
    __builtin_trap();
}
