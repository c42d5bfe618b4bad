/* Prints a greeting, every argument and every environment variable, then
 * exits 0. Tests use it to check that argv and env reach the guest and that
 * nothing of the host's environment leaks in. */
#include <stdio.h>
#include <stdlib.h>

extern char **environ;

int main(int argc, char **argv) {
    printf("hello from wasm\n");
    for (int i = 0; i < argc; i++) {
        printf("arg[%d]=%s\n", i, argv[i]);
    }
    const char *greeting = getenv("GREETING");
    printf("GREETING=%s\n", greeting ? greeting : "(unset)");
    for (char **e = environ; e && *e; e++) {
        printf("env:%s\n", *e);
    }
    return 0;
}
