package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/bootserver/api"
)

func newLogsCmd(g *globals) *cobra.Command {
	var server string
	var fresh time.Duration
	c := &cobra.Command{
		Use:   "logs MACHINE UNIT",
		Short: "Print a unit's journal from a machine, through its boot server (no SSH)",
		Long: `Print what a systemd unit logged on a machine in this boot, as the machine's
agent sent it to the boot server. The agent sends the journal of a unit that
is down or slow by itself; with --fresh the server asks the machine for one
now (through the reply to its next report, within about 30 s) and waits for
it. UNIT without a suffix means UNIT.service.`,
		Example: `  plinth logs --server http://10.0.0.1:8080 master-1 kube-apiserver
  plinth qemu logs master-1 kube-apiserver      # a machine of the running QEMU lab`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return printJournal(cmd.Context(), http.DefaultClient, cmd.OutOrStdout(), cmd.ErrOrStderr(), server, args[0], args[1], fresh)
		},
	}
	c.Flags().StringVar(&server, "server", "http://127.0.0.1:8080", "the boot server's URL")
	c.Flags().DurationVar(&fresh, "fresh", 45*time.Second, "ask the machine for its journal now and wait this long for it (0: the last one it sent)")
	return c
}

// printJournal fetches a unit's journal from the boot server (through
// client) and writes it
// to out, with a note on err saying when the machine sent it.
func printJournal(ctx context.Context, client *http.Client, out, errOut io.Writer, server, machine, unit string, fresh time.Duration) error {
	u, ok := api.UnitName(unit)
	if !ok {
		return fmt.Errorf("%q is not a systemd unit name", unit)
	}
	if strings.ContainsAny(machine, "/?#") || machine == "" {
		return fmt.Errorf("%q is not a machine name", machine)
	}
	q := ""
	if fresh > 0 {
		q = fmt.Sprintf("?fresh=%d", int((fresh+time.Second-1)/time.Second))
	}
	base, err := url.Parse(strings.TrimRight(server, "/"))
	if err != nil || base.Scheme == "" || base.Host == "" {
		return fmt.Errorf("--server %q: want a URL such as http://10.0.0.1:8080", server)
	}
	ctx, cancel := context.WithTimeout(ctx, fresh+30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base.String()+api.LogPath(machine, u)+q, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("journal of %s on %s: %w", u, machine, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("journal of %s on %s: %s: %s", u, machine, resp.Status, strings.TrimSpace(string(b)))
	}
	sent, _ := time.Parse(time.RFC3339, resp.Header.Get(api.HeaderLogTime))
	if _, err := io.Copy(out, resp.Body); err != nil {
		return err
	}
	age := time.Since(sent).Round(time.Second)
	note := fmt.Sprintf("-- %s on %s, sent %s ago", u, machine, age)
	if fresh > 0 && age > fresh {
		note += " (the machine did not send a newer one in " + fresh.String() + ": is its agent running and reporting?)"
	}
	fmt.Fprintln(errOut, note)
	return nil
}
