package main

import (
	"maps"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

// parseName undoes consumerName for a name that is not hashed; hashed reports a hashed one.
func parseName(name string) (topic, group string, hashed, ok bool) {
	var parts [2]strings.Builder
	p := 0
	for i := 0; i < len(name); i++ {
		if name[i] != '_' {
			parts[p].WriteByte(name[i])
			continue
		}
		if i++; i == len(name) {
			return "", "", false, false
		}
		switch name[i] {
		case '_':
			parts[p].WriteByte('_')
		case 'd':
			parts[p].WriteByte('.')
		case 'g':
			if p == 1 {
				return "", "", false, false
			}
			p = 1
		case 'h':
			return "", "", true, true
		default:
			return "", "", false, false
		}
	}
	return parts[0].String(), parts[1].String(), false, p == 1
}

// validConsumerName reports whether JetStream takes name as a durable consumer's name,
// and it is no longer than maxNameLen.
func validConsumerName(name string) bool {
	return name != "" && len(name) <= maxNameLen && !strings.ContainsAny(name, " \t\r\n\f.*>\\/")
}

func TestConsumerName(t *testing.T) {
	for _, tc := range []struct{ topic, group, want string }{
		{"orders.created", "billing", "orders_dcreated_gbilling"},
		{"a_b", "c-d", "a__b_gc-d"},
		{"a", "b.c", "a_gb_dc"},
		{"a.b", "c", "a_db_gc"},
		{"a_db", "c", "a__db_gc"},
	} {
		if got := consumerName(tc.topic, tc.group); got != tc.want {
			t.Errorf("consumerName(%q, %q) = %q, want %q", tc.topic, tc.group, got, tc.want)
		}
	}
	long := strings.Repeat("a.", 99) + "a"
	n1, n2 := consumerName(long, "g"), consumerName(long, "h")
	if n1 == n2 || !validConsumerName(n1) || !validConsumerName(n2) {
		t.Errorf("long names %q and %q: not distinct and valid", n1, n2)
	}
	if _, _, hashed, _ := parseName(n1); !hashed {
		t.Errorf("long name %q is not hashed", n1)
	}
}

func FuzzConsumerName(f *testing.F) {
	f.Add("orders.created", "billing")
	f.Add("a_b.c", "d_g")
	f.Add(strings.Repeat("x_", 100), strings.Repeat("y.", 99)+"y")
	f.Add(strings.Repeat("_", 200), "g")
	f.Fuzz(func(t *testing.T, topic, group string) {
		if checkName("topic", topic) != nil || checkName("group", group) != nil {
			return
		}
		name := consumerName(topic, group)
		if !validConsumerName(name) {
			t.Fatalf("consumerName(%q, %q) = %q, not a valid consumer name", topic, group, name)
		}
		gotTopic, gotGroup, hashed, ok := parseName(name)
		if !ok {
			t.Fatalf("consumerName(%q, %q) = %q does not parse", topic, group, name)
		}
		if !hashed && (gotTopic != topic || gotGroup != group) {
			t.Fatalf("consumerName(%q, %q) = %q, which reads as (%q, %q)", topic, group, name, gotTopic, gotGroup)
		}
		esc := strings.NewReplacer("_", "__", ".", "_d")
		if plain := esc.Replace(topic) + "_g" + esc.Replace(group); hashed != (len(plain) > maxNameLen) {
			t.Fatalf("consumerName(%q, %q) = %q: hashed %v for a plain form of %d bytes", topic, group, name, hashed, len(plain))
		}
	})
}

func TestHeaders(t *testing.T) {
	h := map[string]string{
		"A":                "1\n2\n",
		"Nats-Msg-Id":      "spoofed",
		"nats-rollup":      "all",
		"STATUS":           "503",
		"Description":      "d",
		"Micro-Nats-Thing": "x",
		"micro-nats-":      "y",
		"Empty":            "",
	}
	nh, err := toNATSHeader(h)
	if err != nil {
		t.Fatal(err)
	}
	for k := range nh {
		if hasPrefixFold(k, natsPrefix) || strings.EqualFold(k, "Status") || strings.EqualFold(k, "Description") {
			t.Errorf("key %q reaches NATS unescaped", k)
		}
	}
	if got := nh["A"]; len(got) != 3 {
		t.Errorf("A = %q, want three values", got)
	}
	// JetStream's own headers on the way back are not the message's.
	nh.Set(nats.MsgIdHdr, "id")
	nh.Set("Nats-Expected-Stream", "MICRO")
	if got := fromNATSHeader(nh); !maps.Equal(got, h) {
		t.Errorf("round trip: %q, want %q", got, h)
	}
	if got := messageID(nh, 7); got != "id" {
		t.Errorf("messageID = %q, want id", got)
	}
	if got := messageID(nats.Header{}, 7); got != "nats-seq-7" {
		t.Errorf("messageID with no ID = %q", got)
	}
}

func FuzzHeader(f *testing.F) {
	f.Add("Content-Type", "a\nb", "Nats-Rollup", "all")
	f.Add("Status", "", "Micro-Nats-Status", "x")
	f.Add("k:", "v", "k", "a\rb")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		h := map[string]string{k1: v1, k2: v2}
		nh, err := toNATSHeader(h)
		if err != nil {
			for k, v := range h {
				if checkKey(k) != nil || strings.Contains(v, "\r") {
					return
				}
			}
			t.Fatalf("toNATSHeader(%q): %v, for valid keys and values", h, err)
		}
		for k := range nh {
			if checkKey(k) != nil || (!strings.HasPrefix(k, escapePrefix) && needsEscape(k)) {
				t.Fatalf("toNATSHeader(%q) has key %q", h, k)
			}
		}
		if got := fromNATSHeader(nh); !maps.Equal(got, h) {
			t.Fatalf("round trip of %q: %q", h, got)
		}
	})
}
