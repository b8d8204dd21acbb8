package abi

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// Limits of the elections a registry holds for micro: the Campaign and Leader calls of
// the registry plugin protocol, and the embedded registry's.
const (
	// MaxElectionName bounds an election's name, in bytes.
	MaxElectionName = 128
	// MaxLeaderValue bounds the value a candidate campaigns with, in bytes.
	MaxLeaderValue = 4 << 10
)

// CheckElection checks an election's name, 1 to MaxElectionName bytes of [A-Za-z0-9._-],
// and, when value is not nil, a candidate's value: UTF-8 of at most MaxLeaderValue bytes.
// Its errors name what is wrong.
func CheckElection(name string, value *string) error {
	if name == "" {
		return errors.New("election name is empty")
	}
	if len(name) > MaxElectionName {
		return fmt.Errorf("election name %.40q... is %d bytes long, more than %d", name, len(name), MaxElectionName)
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			r, _ := utf8.DecodeRuneInString(name[i:])
			return fmt.Errorf("election name %q contains %q: only letters, digits, '.', '_' and '-' may", name, r)
		}
	}
	if value == nil {
		return nil
	}
	if len(*value) > MaxLeaderValue {
		return fmt.Errorf("election %q: value of %d bytes, more than %d", name, len(*value), MaxLeaderValue)
	}
	if !utf8.ValidString(*value) {
		return fmt.Errorf("election %q: value %.40q is not valid UTF-8", name, *value)
	}
	return nil
}
