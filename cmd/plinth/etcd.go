package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/bootserver/pki"
	"github.com/plinth-dev/plinth/bootserver/siteetcd"
	"github.com/plinth-dev/plinth/profiles"
)

func newEtcdCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "etcd",
		Short: "The site's etcd: snapshots and restoring from one",
		Long: `plinth serve watches the site's etcd members, records the cluster's ID and
takes a snapshot every --etcd-snapshot-every into its state directory
(STATE/etcd/snapshots). These commands take one now, list them, and ask the
boot server to have the members restore one when every member's data is lost.`,
	}
	cmd.AddCommand(newEtcdSnapshotCmd(g), newEtcdSnapshotsCmd(g), newEtcdRestoreCmd(g), newEtcdForgetCmd(g))
	return cmd
}

// etcdFlags are the flags every plinth etcd command takes.
type etcdFlags struct {
	site, state, etcdutl string
}

func (f *etcdFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.site, "site", "", "site profile directory")
	cmd.Flags().StringVar(&f.state, "state", "", "the boot server's state directory (default $XDG_STATE_HOME/plinth/SITE-NAME)")
	cmd.Flags().StringVar(&f.etcdutl, "etcdutl", "", "etcdutl to check snapshots with (default: etcdutl on PATH, if any)")
}

// open loads the site and finds its etcd store in the state directory.
func (f *etcdFlags) open() (*profiles.Site, string, siteetcd.Store, error) {
	if f.site == "" {
		return nil, "", siteetcd.Store{}, errors.New("--site is required")
	}
	site, err := profiles.LoadSite(f.site)
	if err != nil {
		return nil, "", siteetcd.Store{}, err
	}
	state := f.state
	if state == "" {
		if state, err = pki.DefaultStateDir(site.Name); err != nil {
			return nil, "", siteetcd.Store{}, err
		}
	}
	if err := pki.CheckOutside(state, f.site); err != nil {
		return nil, "", siteetcd.Store{}, fmt.Errorf("--state: %w", err)
	}
	return site, state, siteetcd.Store{Dir: filepath.Join(state, "etcd")}, nil
}

func newEtcdSnapshotCmd(g *globals) *cobra.Command {
	var f etcdFlags
	var out string
	cmd := &cobra.Command{
		Use:   "snapshot --site DIR [--state DIR] [--out FILE]",
		Short: "Take an etcd snapshot now, from a healthy member",
		Long: `Ask every etcd member of the site for its status and take a snapshot from a
healthy one through its gateway (https://ADDR:2379), with a client certificate
from the site CA: this host must reach the members. The snapshot's trailing
sha256 is checked, and etcdutl snapshot status when etcdutl is found. It is
published in STATE/etcd/snapshots beside the boot server's, or at --out, each
with FILE.sha256 (and FILE.status.json from etcdutl).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			site, state, store, err := f.open()
			if err != nil {
				return err
			}
			etcdutl, err := siteetcd.FindEtcdutl(f.etcdutl)
			if err != nil {
				return err
			}
			ca, err := openCA(site, f.site, state, false, g.log)
			if err != nil {
				return err
			}
			members, err := siteetcd.Members(site)
			if err != nil {
				return err
			}
			if len(members) == 0 {
				return fmt.Errorf("%s: the site has no etcd members", f.site)
			}
			client, err := siteetcd.NewClient(ca)
			if err != nil {
				return err
			}
			path := store.NewSnapshotPath(time.Now())
			if out != "" {
				if _, err := os.Lstat(out); err == nil {
					return fmt.Errorf("--out %s exists: name a new file", out)
				}
				path = out
			}
			round := siteetcd.Ask(cmd.Context(), client, members, nil)
			for name, err := range round.Failed {
				g.log.Warn("etcd member not answering", "member", name, "err", err)
			}
			if etcdutl == "" {
				g.log.Warn("etcdutl not found (--etcdutl or PATH): the snapshot is not checked by etcdutl, only by its sha256")
			}
			s, err := siteetcd.TakeSnapshot(cmd.Context(), client, round.Healthy(), path, etcdutl, g.log)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\t%d bytes\tsha256 %s\n", s.Path, s.Size, s.SHA256)
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&out, "out", "", "write the snapshot here instead of the state directory (a new file)")
	return cmd
}

func newEtcdSnapshotsCmd(g *globals) *cobra.Command {
	var f etcdFlags
	cmd := &cobra.Command{
		Use:   "snapshots --site DIR [--state DIR]",
		Short: "List the etcd snapshots in the state directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, _, store, err := f.open()
			if err != nil {
				return err
			}
			list, err := store.Snapshots()
			if err != nil {
				return err
			}
			if len(list) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "no snapshots in %s\n", store.SnapshotDir())
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTIME (UTC)\tBYTES\tSHA256\tREVISION")
			for _, s := range list {
				rev := "-"
				if s.Status != nil {
					rev = fmt.Sprint(s.Status.Revision)
				}
				sum := s.SHA256
				if sum == "" {
					sum = "(no .sha256)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", s.Name, s.Time.Format(time.DateTime), s.Size, sum, rev)
			}
			return tw.Flush()
		},
	}
	f.add(cmd)
	return cmd
}

func newEtcdRestoreCmd(g *globals) *cobra.Command {
	var f etcdFlags
	var cancel bool
	cmd := &cobra.Command{
		Use:   "restore --site DIR [--state DIR] SNAPSHOT | --cancel",
		Short: "Have the site's etcd members restore a snapshot when none of them has data",
		Long: `Check a snapshot (a path, or a name from plinth etcd snapshots) against its
.sha256 file, etcd's own checksum inside it and, when etcdutl is found,
etcdutl snapshot status; then record the request in STATE/etcd/restore.json.
The boot server offers it to the etcd members only while none of them answers:
a restore is for when every member's data is lost, never beside a running
cluster. --cancel withdraws the request.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if cancel {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			_, _, store, err := f.open()
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if cancel {
				had, err := store.CancelRestore()
				if err != nil {
					return err
				}
				if !had {
					fmt.Fprintln(w, "no etcd restore was requested")
					return nil
				}
				fmt.Fprintln(w, "etcd restore request withdrawn: members that boot with no data no longer restore a snapshot")
				return nil
			}
			etcdutl, err := siteetcd.FindEtcdutl(f.etcdutl)
			if err != nil {
				return err
			}
			path, err := store.Find(args[0])
			if err != nil {
				return err
			}
			c, err := siteetcd.Check(cmd.Context(), path, etcdutl)
			if err != nil {
				return err
			}
			checked := "its .sha256 and etcd's checksum inside it"
			if c.Status != nil {
				checked += fmt.Sprintf(", etcdutl snapshot status (revision %d, %d keys)", c.Status.Revision, c.Status.TotalKey)
			} else {
				g.log.Warn("etcdutl not found (--etcdutl or PATH): the snapshot is not checked by etcdutl")
			}
			req := siteetcd.RestoreRequest{File: c.Path, SHA256: c.SHA256, Requested: time.Now().UTC()}
			if err := store.SaveRestore(req); err != nil {
				return err
			}
			fmt.Fprintf(w, `etcd restore requested: %s (%d bytes, sha256 %s)
checked: %s
recorded in %s

Next:
  1. Make sure every etcd member has lost its data: erase each member's state
     disk, or give it a blank one. A member that keeps its data keeps the old
     cluster running, and the boot server offers no restore while any member
     answers.
  2. Reboot every etcd member.
  3. Once no member answers (plinth serve checks every --etcd-poll, 30 s), the
     boot server puts the snapshot into the members' profiles: a member that
     boots with no data restores it; one that boots after the restored cluster
     answers joins it.
  4. When every member answers again, the boot server removes the request and
     logs "etcd restored". Until then: plinth etcd restore --cancel --site %s
`, c.Path, c.Size, c.SHA256, checked, filepath.Join(store.Dir, siteetcd.RestoreFile), f.site)
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&cancel, "cancel", false, "withdraw the restore request")
	return cmd
}

func newEtcdForgetCmd(g *globals) *cobra.Command {
	var f etcdFlags
	cmd := &cobra.Command{
		Use:   "forget --site DIR [--state DIR]",
		Short: "Let etcd members with no data found a new, empty cluster",
		Long: `Once plinth serve has seen the site's etcd cluster, a member that boots with
no data never founds a new one while any member keeps its data on a state
disk: it waits for them. When every member's data is lost for good and no
snapshot is to be restored, forget removes the cluster's record
(STATE/etcd/cluster.json): members that then boot with no data and find no
member answering found a new, EMPTY cluster. While any member answers, the
boot server records the cluster again at its next poll.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, _, store, err := f.open()
			if err != nil {
				return err
			}
			rec, err := store.Cluster()
			if err != nil {
				return err
			}
			had, err := store.ForgetCluster()
			if err != nil {
				return err
			}
			if !had {
				fmt.Fprintln(cmd.OutOrStdout(), "no etcd cluster is recorded: members with no data found one when none answers")
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "etcd cluster %s forgotten (seen %s): etcd members that boot with no data and find no member answering found a new, empty cluster\n",
				rec.ClusterID, rec.Seen.Format(time.RFC3339))
			return nil
		},
	}
	f.add(cmd)
	return cmd
}
