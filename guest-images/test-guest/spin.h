/* The CPU-bound loop shared by the guest and the host comparison binary. */
static inline unsigned long spin(unsigned long n) {
	unsigned long x = 0x9e3779b97f4a7c15ul, acc = 0;
	for (unsigned long i = 0; i < n; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		acc += x * (i | 1);
	}
	return acc ^ x;
}
