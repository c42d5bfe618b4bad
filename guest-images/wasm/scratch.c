/* Writes a file into the scratch directory by a relative and by an absolute
 * path and reads each back. Exits 0 if both round trips match. */
#include <stdio.h>
#include <string.h>

static int round_trip(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        printf("cannot create %s\n", path);
        return 1;
    }
    fputs(text, f);
    fclose(f);

    char buf[128] = {0};
    f = fopen(path, "r");
    if (f == NULL) {
        printf("cannot reopen %s\n", path);
        return 1;
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    if (n != strlen(text) || memcmp(buf, text, n) != 0) {
        printf("mismatch in %s\n", path);
        return 1;
    }
    printf("ok %s\n", path);
    return 0;
}

int main(void) {
    int failed = 0;
    failed |= round_trip("relative.txt", "written by relative path\n");
    failed |= round_trip("/scratch/absolute.txt", "written by absolute path\n");
    return failed;
}
