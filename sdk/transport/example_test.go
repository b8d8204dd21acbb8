package transport_test

import (
	"fmt"
	"strings"

	"github.com/microhost/micro/sdk/transport"
)

// A Message carries one header per name: a header with several values (Set-Cookie, say)
// has them joined by ValueSep, which no HTTP header value can hold. A transport whose own
// headers cannot hold a line feed splits the value there, and joins it back on arrival.
func ExampleMessage() {
	m := &transport.Message{Header: map[string]string{
		"Set-Cookie": strings.Join([]string{"a=1", "b=2"}, transport.ValueSep),
	}}
	for _, v := range strings.Split(m.Header["Set-Cookie"], transport.ValueSep) {
		fmt.Println(v)
	}
	// Output:
	// a=1
	// b=2
}
