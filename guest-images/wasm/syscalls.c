/* A syscall-heavy workload: many small file writes, stats, reads and unlinks
 * in scratch. argv[1] is the number of rounds (default 1000). Used to measure
 * what confinement costs per host call. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 1000;
    char name[64];
    char buf[256];
    long bytes = 0;
    for (int i = 0; i < rounds; i++) {
        snprintf(name, sizeof name, "/scratch/f%d", i % 16);
        int fd = open(name, O_CREAT | O_TRUNC | O_WRONLY, 0644);
        if (fd < 0) {
            printf("open for write failed at round %d\n", i);
            return 1;
        }
        int len = snprintf(buf, sizeof buf, "round %d\n", i);
        if (write(fd, buf, (size_t)len) != len) {
            return 1;
        }
        close(fd);

        struct stat st;
        if (stat(name, &st) != 0 || st.st_size != len) {
            printf("stat failed at round %d\n", i);
            return 1;
        }
        fd = open(name, O_RDONLY);
        if (fd < 0) {
            return 1;
        }
        bytes += read(fd, buf, sizeof buf);
        close(fd);
        if (i % 16 == 15) {
            unlink(name);
        }
    }
    printf("rounds=%d bytes=%ld\n", rounds, bytes);
    return 0;
}
