// Command nodetool is the one small static program the real-node tier puts into images of its own:
// the pod sandbox ("pause") image and the client pod the tests run requests from. It has no shell
// and needs none: tests run it with `kubectl exec POD -- /nodetool SUBCOMMAND`.
//
//	nodetool pause                       wait for SIGTERM or SIGINT, reaping children (the sandbox)
//	nodetool evaluate URL FLAG [ENTITY]  one Connect JSON Evaluate; prints the response body
//	nodetool loop URL FLAG DURATION      Evaluate back to back for DURATION; prints a JSON summary:
//	                                     answers counted by source and value, failures counted
//	nodetool lookup NAME                 resolves NAME with the pod's resolver; prints the addresses
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "pause":
		pause()
	case "evaluate":
		err = evaluate(os.Args[2:])
	case "loop":
		err = loop(os.Args[2:])
	case "lookup":
		err = lookup(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: nodetool pause | evaluate URL FLAG [ENTITY] | loop URL FLAG DURATION | lookup NAME")
	os.Exit(64)
}

// pause is the sandbox's process 1: it holds the pod's namespaces and reaps orphans until told to stop.
func pause() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

var client = &http.Client{Timeout: 5 * time.Second}

// call makes one Connect JSON Evaluate and returns the response body, or an error naming the
// HTTP status or transport failure.
func call(url, flag, entity string) ([]byte, error) {
	req, _ := json.Marshal(map[string]string{"flagId": flag, "entityId": entity})
	resp, err := client.Post(url+"/pbflags.v1.FlagEvaluatorService/Evaluate", "application/json", bytes.NewReader(req))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
	}
	return body, nil
}

func evaluate(args []string) error {
	if len(args) < 2 || len(args) > 3 {
		usage()
	}
	entity := ""
	if len(args) == 3 {
		entity = args[2]
	}
	body, err := call(args[0], args[1], entity)
	if err != nil {
		return err
	}
	fmt.Println(string(body))
	return nil
}

// loop reports every answer it got, counted by "SOURCE VALUE" (value as compact JSON), and every
// failure (the first few messages kept), so a test can assert "0 failed" and see what it was served.
func loop(args []string) error {
	if len(args) != 3 {
		usage()
	}
	d, err := time.ParseDuration(args[2])
	if err != nil {
		return fmt.Errorf("DURATION: %v", err)
	}
	answers := map[string]int{}
	var failed int
	var failures []string
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		body, err := call(args[0], args[1], "")
		if err != nil {
			failed++
			if len(failures) < 10 {
				failures = append(failures, err.Error())
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		var r struct {
			Source string          `json:"source"`
			Value  json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			failed++
			continue
		}
		answers[r.Source+" "+string(r.Value)]++
		time.Sleep(5 * time.Millisecond)
	}
	out, _ := json.Marshal(map[string]any{"answers": answers, "failed": failed, "failures": failures})
	fmt.Println(string(out))
	return nil
}

func lookup(args []string) error {
	if len(args) != 1 {
		usage()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, args[0])
	if err != nil {
		return err
	}
	for _, a := range addrs {
		fmt.Println(a)
	}
	return nil
}
