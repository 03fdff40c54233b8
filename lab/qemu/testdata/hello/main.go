// Command hello is a tiny /init for the harness's own tests. It prints a
// marker on the console and powers the machine off. The kernel passes
// unknown name=value arguments to /init as environment:
//
//	HOLD=1          stay up after the marker (for Close and timeout tests)
//	NET=send|recv   load the modules listed in /modules, bring eth0 up and
//	                send or receive raw Ethernet frames carrying TOKEN
//	PARTIAL=1       print a line in two pieces 50 ms apart
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const etherType = 0x88b5 // IEEE local experimental

func main() {
	c, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		c = os.Stdout
	}
	fmt.Fprintln(c, "HARNESS-MARKER hello from /init")
	if os.Getenv("PARTIAL") != "" {
		fmt.Fprint(c, "PARTIAL host=ab")
		time.Sleep(50 * time.Millisecond)
		fmt.Fprintln(c, "cdef done")
	}
	if mode := os.Getenv("NET"); mode != "" {
		if err := network(c, mode, os.Getenv("TOKEN")); err != nil {
			fmt.Fprintln(c, "NET-ERROR", err)
		}
	}
	if os.Getenv("HOLD") != "" {
		time.Sleep(time.Hour)
	}
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func network(c io.Writer, mode, token string) error {
	if err := loadModules("/modules"); err != nil {
		return err
	}
	var ifindex int
	for i := 0; ; i++ {
		ifr, err := unix.NewIfreq("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		err = unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr)
		if err == nil {
			ifindex = int(ifr.Uint32())
			ifr.SetUint16(unix.IFF_UP)
			err = unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("eth0 up: %w", err)
			}
			break
		}
		unix.Close(fd)
		if i > 100 {
			return fmt.Errorf("no eth0: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	proto := int(htons(etherType))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, proto)
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	to := &unix.SockaddrLinklayer{Protocol: htons(etherType), Ifindex: ifindex, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	if err := unix.Bind(fd, to); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	payload := []byte("plinth-frame " + token)
	switch mode {
	case "send":
		fmt.Fprintln(c, "NET-SENDING")
		for {
			if err := unix.Sendto(fd, payload, 0, to); err != nil {
				return fmt.Errorf("send: %w", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	case "recv":
		fmt.Fprintln(c, "NET-LISTENING")
		buf := make([]byte, 1500)
		for {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return fmt.Errorf("recv: %w", err)
			}
			if bytes.HasPrefix(buf[:n], []byte("plinth-frame ")) {
				fmt.Fprintf(c, "NET-GOT %s\n", buf[len("plinth-frame "):n])
				return nil
			}
		}
	}
	return fmt.Errorf("NET=%q: want send or recv", mode)
}

// loadModules loads the modules listed in file, one path a line, in order.
func loadModules(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		p := strings.TrimSpace(s.Text())
		if p == "" {
			continue
		}
		m, err := os.Open(p)
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(m.Fd()), "", 0)
		m.Close()
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("load %s: %w", p, err)
		}
	}
	return s.Err()
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
