// Command consumer consumes healthprobe's health events: a durable JetStream pull consumer
// with explicit acks, idempotent by event_id.
//
// Delivery is at least once. A message comes again when its ack was lost (the consumer died
// after acting, before acking) and, rarely, when the worker published an event again after
// JetStream's duplicate window. The event_id is the idempotency key: it is recorded before
// the ack, so a second delivery is recognised and acknowledged without acting twice.
//
//	go build -o consumer . && NATS_URL=nats://127.0.0.1:4222 ./consumer -state processed.txt
//
// Prints one JSON line per message: {"outcome": "handled" | "duplicate" | "rejected",
// "event_id", "event_type", "game_id", "container_id", "delivered"}.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Event is the envelope healthprobe publishes (the AsyncAPI document describes it).
type Event struct {
	EventID      string          `json:"event_id"`
	GameID       string          `json:"game_id"`
	ContainerID  string          `json:"container_id"`
	EventType    string          `json:"event_type"`
	OccurredAtMs int64           `json:"occurred_at_ms"`
	Details      json.RawMessage `json:"details"`
}

// Processed is the set of event ids already acted upon, kept in an append-only file. A real
// consumer keeps it in its own database, written in the same transaction as its action.
type Processed struct {
	seen map[string]bool
	file *os.File
}

func openProcessed(path string) (*Processed, error) {
	p := &Processed{seen: map[string]bool{}}
	if f, err := os.Open(path); err == nil {
		scanner := bufio.NewScanner(f)
		for scanner.Scan() {
			p.seen[strings.TrimSpace(scanner.Text())] = true
		}
		f.Close()
		if err := scanner.Err(); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	file, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	p.file = file
	return p, nil
}

// ActOnce runs act and records the id durably; false when the id was already recorded.
func (p *Processed) ActOnce(event Event, act func(Event)) (bool, error) {
	if p.seen[event.EventID] {
		return false, nil
	}
	act(event)
	if _, err := fmt.Fprintln(p.file, event.EventID); err != nil {
		return false, err
	}
	if err := p.file.Sync(); err != nil {
		return false, err
	}
	p.seen[event.EventID] = true
	return true, nil
}

func decode(data []byte) (Event, bool) {
	var event Event
	if err := json.Unmarshal(data, &event); err != nil {
		return event, false
	}
	known := event.EventType == "probe_failed" || event.EventType == "probe_recovered"
	return event, known && event.EventID != "" && event.GameID != ""
}

// act is what a runtime manager would do: restart on probe_failed, clear on probe_recovered.
func act(event Event) {
	verb := "mark healthy"
	if event.EventType == "probe_failed" {
		verb = "restart"
	}
	container := event.ContainerID
	if container == "" {
		container = "-"
	}
	log.Printf("%s game %s (container %s)", verb, event.GameID, container)
}

func report(outcome string, event Event, delivered uint64) {
	line, _ := json.Marshal(map[string]interface{}{
		"outcome": outcome, "delivered": delivered, "event_id": event.EventID,
		"event_type": event.EventType, "game_id": event.GameID, "container_id": event.ContainerID,
	})
	fmt.Println(string(line))
}

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func main() {
	log.SetPrefix("consumer: ")
	log.SetFlags(0)
	natsURL := flag.String("nats-url", env("NATS_URL", nats.DefaultURL), "NATS server")
	stream := flag.String("stream", env("HEALTHPROBE_STREAM", "RUNTIME_HEALTH"), "JetStream stream")
	prefix := flag.String("subject-prefix", env("HEALTHPROBE_SUBJECT_PREFIX", "runtime.health"), "subject prefix")
	durable := flag.String("durable", "runtime-manager", "durable consumer name")
	state := flag.String("state", "processed-events.txt", "file of handled event ids")
	ackWait := flag.Duration("ack-wait", 30*time.Second, "time before an unacked message comes again")
	maxEvents := flag.Int("max-events", 0, "exit after this many messages (0: never)")
	idleExit := flag.Duration("idle-exit", 0, "exit after this long without a message (0: never)")
	flag.Parse()

	processed, err := openProcessed(*state)
	if err != nil {
		log.Fatalf("state %s: %v", *state, err)
	}
	nc, err := nats.Connect(*natsURL, nats.Name("healthprobe-example-"+*durable))
	if err != nil {
		log.Fatalf("connect %s: %v", *natsURL, err)
	}
	defer nc.Drain()
	js, err := nc.JetStream()
	if err != nil {
		log.Fatalf("jetstream: %v", err)
	}
	sub, err := js.PullSubscribe(*prefix+".>", *durable, nats.BindStream(*stream),
		nats.AckExplicit(), nats.DeliverAll(), nats.AckWait(*ackWait), nats.MaxAckPending(1000))
	if err != nil {
		log.Fatalf("pull consumer %s on %s: %v", *durable, *stream, err)
	}

	seen := 0
	idleSince := time.Now()
	for *maxEvents == 0 || seen < *maxEvents {
		// Never fetch more than is left to handle: what is fetched and not acked would only
		// come back after ack-wait.
		batch := 10
		if *maxEvents > 0 && *maxEvents-seen < batch {
			batch = *maxEvents - seen
		}
		messages, err := sub.Fetch(batch, nats.MaxWait(time.Second))
		if errors.Is(err, nats.ErrTimeout) {
			if *idleExit > 0 && time.Since(idleSince) >= *idleExit {
				break
			}
			continue
		} else if err != nil {
			log.Fatalf("fetch: %v", err)
		}
		idleSince = time.Now()
		for _, message := range messages {
			seen++
			var delivered uint64
			if meta, err := message.Metadata(); err == nil {
				delivered = meta.NumDelivered
			}
			event, ok := decode(message.Data)
			if !ok {
				report("rejected", Event{}, delivered)
				_ = message.Term()
				continue
			}
			first, err := processed.ActOnce(event, act)
			if err != nil {
				// Not acked: it comes again after ack-wait.
				log.Printf("recording %s: %v", event.EventID, err)
				continue
			}
			// Acknowledged only after the outcome is recorded, and confirmed by the server:
			// an exit right after this loses nothing and repeats nothing.
			if err := message.AckSync(); err != nil {
				log.Printf("ack %s: %v", event.EventID, err)
				continue
			}
			outcome := "duplicate"
			if first {
				outcome = "handled"
			}
			report(outcome, event, delivered)
		}
	}
}
