package abi

// The Micro-* headers: the wire contract of a call between micro processes, and of what
// micro tells the apps it fronts. micro owns every header that starts with HeaderPrefix: it
// drops those that callers, apps and peers send (but for the few named below that a
// caller may set, or that a peer micro sets for an app), and sets its own. Transports carry
// them as message headers; over HTTP they are HTTP headers.
const (
	// HeaderPrefix starts every header micro owns; it matches in any case.
	HeaderPrefix = "Micro-"

	// HeaderService names the service a call is for.
	HeaderService = "Micro-Service"
	// HeaderEndpoint names the endpoint a call is for: the first segment of its path,
	// e.g. "Greeter.Hello" for /Greeter.Hello or "users" for /users/42.
	HeaderEndpoint = "Micro-Endpoint"
	// HeaderMethod carries a call's HTTP method; absent means POST.
	HeaderMethod = "Micro-Method"
	// HeaderPath carries the path and query the app gets, escaped as the caller sent them,
	// e.g. "/users/42?expand=orders"; absent means "/" and the endpoint.
	HeaderPath = "Micro-Path"
	// HeaderNode names the node the caller selected.
	HeaderNode = "Micro-Node"
	// HeaderTimeout carries the call's remaining budget as a Go duration, e.g. "250ms".
	// A caller may set it at the ingress; micro sets it at every hop and for the app.
	HeaderTimeout = "Micro-Timeout"
	// HeaderStatus carries an answer's HTTP status code, e.g. "200", in a message.
	HeaderStatus = "Micro-Status"
	// HeaderCaller tells an app which services made the call (comma-separated), as the
	// caller's certificate or signature proved it. micro drops any a caller claims.
	HeaderCaller = "Micro-Caller"
	// HeaderStream marks the first message of a stream; its value is "1".
	HeaderStream = "Micro-Stream"
	// HeaderBinary marks a stream message that was a binary WebSocket message ("1");
	// without it a message is text.
	HeaderBinary = "Micro-Binary"
	// HeaderError marks an answer that micro at the node gave in place of the app, and
	// says why (refused, unavailable, app, timeout, reply, caller, internal): whether
	// another node may take the call and whether the answer counts against the node.
	HeaderError = "Micro-Error"
	// HeaderIdempotent, set by a caller to "1" or "true", declares its call safe to
	// repeat, as if its endpoint were declared idempotent.
	HeaderIdempotent = "Micro-Idempotent"
	// HeaderAttempts tells a caller how many attempts its call took.
	HeaderAttempts = "Micro-Attempts"

	// HeaderTopic, on a delivery (a call that carries a published message to a
	// subscriber), names the topic the message was published to.
	HeaderTopic = "Micro-Topic"
	// HeaderMessageID is a message's ID, the same on every delivery of it, so that a
	// subscriber can drop duplicates.
	HeaderMessageID = "Micro-Message-Id"
	// HeaderDelivery counts the deliveries of a message to a subscriber, 1 for the first.
	HeaderDelivery = "Micro-Delivery"
	// HeaderDeadTopic, HeaderDeadGroup and HeaderDeadReason, on a message in a dead-letter
	// topic, name the topic it was published to, the subscribing service that failed it,
	// and why its last delivery failed.
	HeaderDeadTopic  = "Micro-Dead-Topic"
	HeaderDeadGroup  = "Micro-Dead-Group"
	HeaderDeadReason = "Micro-Dead-Reason"

	// HeaderSignature and HeaderSigner carry a message's signature and its signer's
	// certificate chain (base64), on transports that cannot carry TLS.
	HeaderSignature = "Micro-Signature"
	HeaderSigner    = "Micro-Signer"
	// HeaderNonce and HeaderSignedAt, on the first request of a signed call, carry the
	// call's nonce and when it was signed (Unix milliseconds).
	HeaderNonce    = "Micro-Nonce"
	HeaderSignedAt = "Micro-Signed-At"

	// ValueSep joins the values of a header that has several (Set-Cookie, say) in a
	// message's header. HTTP allows no line feed in a header value, so it cannot be part
	// of one.
	ValueSep = "\n"
)
