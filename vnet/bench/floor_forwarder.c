/*
 * The floor for a userspace tunnel that sleeps when idle: one thread that
 * moves packets between a TUN device and a connected UDP socket, one per
 * syscall, with no crypto, no batching and no offload. compare.sh runs a
 * pair of these over the same veth as vnet; whatever RTT it adds is what
 * waking a sleeping process costs on the machine, which no design that
 * does not spin through idle time can avoid.
 *
 * Usage: floor_forwarder IFNAME LOCAL_PORT PEER_IPV4 PEER_PORT
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int die(const char *what) {
    fprintf(stderr, "floor_forwarder: %s: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s IFNAME LOCAL_PORT PEER_IPV4 PEER_PORT\n", argv[0]);
        return 2;
    }
    int tun = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (tun < 0)
        return die("open /dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
    if (ioctl(tun, TUNSETIFF, &ifr) < 0)
        return die("TUNSETIFF");

    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (udp < 0)
        return die("socket");
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (bind(udp, (struct sockaddr *)&local, sizeof local) < 0)
        return die("bind");
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[4]))};
    if (inet_pton(AF_INET, argv[3], &peer.sin_addr) != 1) {
        fprintf(stderr, "floor_forwarder: bad peer address %s\n", argv[3]);
        return 2;
    }
    if (connect(udp, (struct sockaddr *)&peer, sizeof peer) < 0)
        return die("connect");

    static char buf[65536];
    struct pollfd fds[2] = {{.fd = tun, .events = POLLIN}, {.fd = udp, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return die("poll");
        }
        if (fds[0].revents & POLLIN) {
            ssize_t n = read(tun, buf, sizeof buf);
            if (n > 0)
                (void)send(udp, buf, (size_t)n, 0);
        }
        if (fds[1].revents & POLLIN) {
            ssize_t n = recv(udp, buf, sizeof buf, 0);
            if (n > 0)
                (void)write(tun, buf, (size_t)n);
        }
    }
}
