/* Host build of the guest's spin loop, for the guest-vs-host benchmark.
 * Prints the same line as the guest's `spin N` command. */
#include <stdio.h>
#include <stdlib.h>
#include <x86intrin.h>
#include "spin.h"
int main(int argc, char **argv) {
	unsigned long n = argc > 1 ? strtoul(argv[1], 0, 10) : 100000000ul;
	unsigned long t0 = __rdtsc();
	unsigned long r = spin(n);
	unsigned long t1 = __rdtsc();
	printf("spin: n=%lu result=%016lx cycles=%lu\n", n, r, t1 - t0);
	return 0;
}
