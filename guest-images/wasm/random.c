/* Prints 16 bytes from the host's random source (WASI random_get), in hex.
 * Two sandboxes must never print the same line. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    unsigned char bytes[16];
    if (getentropy(bytes, sizeof bytes) != 0) {
        perror("getentropy");
        return 1;
    }
    for (unsigned i = 0; i < sizeof bytes; i++)
        printf("%02x", bytes[i]);
    printf("\n");
    return 0;
}
