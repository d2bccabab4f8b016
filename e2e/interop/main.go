// Command interop calls every FlagEvaluatorService RPC, and opens the FlagChangeService stream, with connect-go, over Connect (binary and
// JSON), gRPC and gRPC-Web, against a running evaluator, and checks the answers. It uses code
// generated from this repository's protos, under the import paths of the pbflags v0.6 Go module, so
// it exercises the wire contract the way that module's clients do.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"

	pbflagsv1 "github.com/SpotlightGOV/pbflags/gen/pbflags/v1"
	"github.com/SpotlightGOV/pbflags/gen/pbflags/v1/pbflagsv1connect"
)

func main() {
	url := flag.String("url", "http://127.0.0.1:9201", "evaluator base URL")
	protocol := flag.String("protocol", "connect-proto", "connect-proto, connect-json, grpc or grpc-web")
	killed := flag.String("killed", "notifications/3", "a flag the database has killed")
	caFile := flag.String("cacert", "", "PEM CA bundle for an https:// URL")
	adminToken := flag.String("admin-token", "", "with it, call every FlagAdminService RPC at -url (an admin listener) instead")
	flag.Parse()

	// Cleartext: h2c for gRPC (prior knowledge), HTTP/1.1 for Connect and gRPC-Web. TLS: ALPN h2
	// for gRPC, http/1.1 for the others, the server checked against -cacert.
	var tlsConfig *tls.Config
	if strings.HasPrefix(*url, "https://") {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "-cacert: %v\n", err)
			os.Exit(64)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			fmt.Fprintf(os.Stderr, "-cacert %s: no certificates\n", *caFile)
			os.Exit(64)
		}
		tlsConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	httpClient := http.DefaultClient
	if tlsConfig != nil {
		httpClient = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig}}
	}
	var opts []connect.ClientOption
	switch *protocol {
	case "connect-proto":
	case "connect-json":
		opts = append(opts, connect.WithProtoJSON())
	case "grpc":
		opts = append(opts, connect.WithGRPC())
		if tlsConfig != nil {
			httpClient = &http.Client{Transport: &http2.Transport{TLSClientConfig: tlsConfig}}
		} else {
			httpClient = &http.Client{Transport: &http2.Transport{
				AllowHTTP: true,
				DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, network, addr)
				},
			}}
		}
	case "grpc-web":
		opts = append(opts, connect.WithGRPCWeb())
	default:
		fmt.Fprintf(os.Stderr, "unknown protocol %q\n", *protocol)
		os.Exit(64)
	}
	client := pbflagsv1connect.NewFlagEvaluatorServiceClient(httpClient, *url, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if *adminToken != "" {
		os.Exit(admin(ctx, pbflagsv1connect.NewFlagAdminServiceClient(httpClient, *url, opts...), *protocol, *adminToken))
	}

	passed, failed := 0, 0
	check := func(name string, err error) {
		if err != nil {
			failed++
			fmt.Printf("FAIL %s %s: %v\n", *protocol, name, err)
		} else {
			passed++
			fmt.Printf("ok   %s %s\n", *protocol, name)
		}
	}

	check("Evaluate global", func() error {
		r, err := client.Evaluate(ctx, connect.NewRequest(&pbflagsv1.EvaluateRequest{FlagId: "notifications/2"}))
		if err != nil {
			return err
		}
		if r.Msg.GetFlagId() != "notifications/2" || r.Msg.GetValue().GetStringValue() != "weekly" || r.Msg.GetSource() != pbflagsv1.EvaluationSource_EVALUATION_SOURCE_GLOBAL {
			return fmt.Errorf("got %v", r.Msg)
		}
		return nil
	}())
	check("Evaluate override", func() error {
		r, err := client.Evaluate(ctx, connect.NewRequest(&pbflagsv1.EvaluateRequest{FlagId: "notifications/1", EntityId: "user-100"}))
		if err != nil {
			return err
		}
		if r.Msg.GetValue().GetBoolValue() != false || r.Msg.GetSource() != pbflagsv1.EvaluationSource_EVALUATION_SOURCE_OVERRIDE {
			return fmt.Errorf("got %v", r.Msg)
		}
		return nil
	}())
	check("BulkEvaluate", func() error {
		r, err := client.BulkEvaluate(ctx, connect.NewRequest(&pbflagsv1.BulkEvaluateRequest{EntityId: "user-100"}))
		if err != nil {
			return err
		}
		if len(r.Msg.GetEvaluations()) != 4 {
			return fmt.Errorf("want 4 evaluations, got %v", r.Msg)
		}
		for _, e := range r.Msg.GetEvaluations() {
			if e.GetFlagId() == *killed && e.GetSource() != pbflagsv1.EvaluationSource_EVALUATION_SOURCE_KILLED {
				return fmt.Errorf("%s not killed: %v", *killed, e)
			}
		}
		return nil
	}())
	check("Health", func() error {
		r, err := client.Health(ctx, connect.NewRequest(&pbflagsv1.HealthRequest{}))
		if err != nil {
			return err
		}
		if r.Msg.GetStatus() != pbflagsv1.EvaluatorStatus_EVALUATOR_STATUS_SERVING {
			return fmt.Errorf("got %v", r.Msg)
		}
		return nil
	}())
	check("GetFlagState", func() error {
		r, err := client.GetFlagState(ctx, connect.NewRequest(&pbflagsv1.GetFlagStateRequest{FlagId: "notifications/2"}))
		if err != nil {
			return err
		}
		if r.Msg.GetFlag().GetState() != pbflagsv1.State_STATE_ENABLED || r.Msg.GetFlag().GetValue().GetStringValue() != "weekly" {
			return fmt.Errorf("got %v", r.Msg)
		}
		return nil
	}())
	check("GetFlagState not found", func() error {
		_, err := client.GetFlagState(ctx, connect.NewRequest(&pbflagsv1.GetFlagStateRequest{FlagId: "nope/1"}))
		if connect.CodeOf(err) != connect.CodeNotFound {
			return fmt.Errorf("want not_found, got %v", err)
		}
		return nil
	}())
	check("GetKilledFlags", func() error {
		r, err := client.GetKilledFlags(ctx, connect.NewRequest(&pbflagsv1.GetKilledFlagsRequest{}))
		if err != nil {
			return err
		}
		if len(r.Msg.GetFlagIds()) != 1 || r.Msg.GetFlagIds()[0] != *killed {
			return fmt.Errorf("got %v", r.Msg)
		}
		return nil
	}())
	check("GetOverrides", func() error {
		r, err := client.GetOverrides(ctx, connect.NewRequest(&pbflagsv1.GetOverridesRequest{EntityId: "user-100"}))
		if err != nil {
			return err
		}
		if len(r.Msg.GetOverrides()) != 1 || r.Msg.GetOverrides()[0].GetFlagId() != "notifications/1" {
			return fmt.Errorf("got %v", r.Msg)
		}
		return nil
	}())
	check("GetOverrides without entity", func() error {
		_, err := client.GetOverrides(ctx, connect.NewRequest(&pbflagsv1.GetOverridesRequest{}))
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeInvalidArgument {
			return fmt.Errorf("want invalid_argument, got %v", err)
		}
		return nil
	}())

	// The change stream (an addition to v0.6's contract): a server stream that opens with a
	// heartbeat, on every protocol.
	check("WatchChanges opens with a heartbeat", func() error {
		changes := pbflagsv1connect.NewFlagChangeServiceClient(httpClient, *url, opts...)
		sctx, stop := context.WithTimeout(ctx, 10*time.Second)
		defer stop()
		stream, err := changes.WatchChanges(sctx, connect.NewRequest(&pbflagsv1.WatchChangesRequest{}))
		if err != nil {
			return err
		}
		defer stream.Close()
		if !stream.Receive() {
			return fmt.Errorf("no message: %v", stream.Err())
		}
		if stream.Msg().GetKind() != pbflagsv1.ChangeKind_CHANGE_KIND_HEARTBEAT {
			return fmt.Errorf("got %v", stream.Msg())
		}
		return nil
	}())

	fmt.Printf("interop %s: %d passed, %d failed\n", *protocol, passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

// admin calls every FlagAdminService RPC with the bearer token and checks the answers; returns the
// exit code.
func admin(ctx context.Context, c pbflagsv1connect.FlagAdminServiceClient, protocol, token string) int {
	passed, failed := 0, 0
	check := func(name string, err error) {
		if err != nil {
			failed++
			fmt.Printf("FAIL %s admin %s: %v\n", protocol, name, err)
		} else {
			passed++
			fmt.Printf("ok   %s admin %s\n", protocol, name)
		}
	}
	req := func(r interface{ Header() http.Header }) {
		r.Header().Set("Authorization", "Bearer "+token)
	}
	actor := "interop-" + protocol
	check("ListFeatures", func() error {
		r := connect.NewRequest(&pbflagsv1.ListFeaturesRequest{})
		req(r)
		resp, err := c.ListFeatures(ctx, r)
		if err != nil {
			return err
		}
		if len(resp.Msg.GetFeatures()) != 1 || len(resp.Msg.GetFeatures()[0].GetFlags()) != 4 {
			return fmt.Errorf("got %v", resp.Msg)
		}
		return nil
	}())
	check("UpdateFlagState", func() error {
		r := connect.NewRequest(&pbflagsv1.UpdateFlagStateRequest{
			FlagId: "notifications/4", State: pbflagsv1.State_STATE_ENABLED,
			Value: &pbflagsv1.FlagValue{Value: &pbflagsv1.FlagValue_DoubleValue{DoubleValue: 0.5}}, Actor: actor,
		})
		req(r)
		_, err := c.UpdateFlagState(ctx, r)
		return err
	}())
	check("UpdateFlagState of the wrong type", func() error {
		r := connect.NewRequest(&pbflagsv1.UpdateFlagStateRequest{
			FlagId: "notifications/4", State: pbflagsv1.State_STATE_ENABLED,
			Value: &pbflagsv1.FlagValue{Value: &pbflagsv1.FlagValue_BoolValue{BoolValue: true}},
		})
		req(r)
		_, err := c.UpdateFlagState(ctx, r)
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			return fmt.Errorf("want invalid_argument, got %v", err)
		}
		return nil
	}())
	check("SetFlagOverride", func() error {
		r := connect.NewRequest(&pbflagsv1.SetFlagOverrideRequest{
			FlagId: "notifications/1", EntityId: "interop-user", State: pbflagsv1.State_STATE_ENABLED,
			Value: &pbflagsv1.FlagValue{Value: &pbflagsv1.FlagValue_BoolValue{BoolValue: false}}, Actor: actor,
		})
		req(r)
		_, err := c.SetFlagOverride(ctx, r)
		return err
	}())
	check("GetFlag", func() error {
		r := connect.NewRequest(&pbflagsv1.GetFlagRequest{FlagId: "notifications/1"})
		req(r)
		resp, err := c.GetFlag(ctx, r)
		if err != nil {
			return err
		}
		for _, o := range resp.Msg.GetFlag().GetOverrides() {
			if o.GetEntityId() == "interop-user" {
				return nil
			}
		}
		return fmt.Errorf("no interop-user override in %v", resp.Msg)
	}())
	check("RemoveFlagOverride", func() error {
		r := connect.NewRequest(&pbflagsv1.RemoveFlagOverrideRequest{FlagId: "notifications/1", EntityId: "interop-user", Actor: actor})
		req(r)
		_, err := c.RemoveFlagOverride(ctx, r)
		return err
	}())
	check("GetAuditLog", func() error {
		flagID := "notifications/1"
		r := connect.NewRequest(&pbflagsv1.GetAuditLogRequest{FlagId: &flagID, Limit: 1})
		req(r)
		resp, err := c.GetAuditLog(ctx, r)
		if err != nil {
			return err
		}
		e := resp.Msg.GetEntries()
		if len(e) != 1 || e[0].GetAction() != "REMOVE_OVERRIDE" || e[0].GetActor() != actor || e[0].GetCreatedAt().AsTime().IsZero() {
			return fmt.Errorf("got %v", resp.Msg)
		}
		return nil
	}())
	check("no token", func() error {
		_, err := c.ListFeatures(ctx, connect.NewRequest(&pbflagsv1.ListFeaturesRequest{}))
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			return fmt.Errorf("want unauthenticated, got %v", err)
		}
		return nil
	}())
	fmt.Printf("interop %s admin: %d passed, %d failed\n", protocol, passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}
