/* Exits with the status given in argv[1] (through proc_exit). */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: exitcode CODE\n");
        return 2;
    }
    exit(atoi(argv[1]));
}
